"""Progressive delivery: the Rollout controller (staged canaries with automatic analysis).

One concern per module: :mod:`~meshware.rollout.plan` (the stages of a rollout),
:mod:`~meshware.rollout.state` (what is remembered), :mod:`~meshware.rollout.machine` (what
to do next, without I/O), :mod:`~meshware.rollout.traffic` (the VirtualService a stage asks
for), :mod:`~meshware.rollout.checks` (judging a check), :mod:`~meshware.rollout.analysis`
(the metric queries), :mod:`~meshware.rollout.webhooks`, :mod:`~meshware.rollout.lease`
(leader election), :mod:`~meshware.rollout.storage` (state in Redis),
:mod:`~meshware.rollout.writer` (config writes) and :mod:`~meshware.rollout.controller`
(the loop). See docs/rollouts.md.
"""
