"""``meshware demo``: Bookinfo's services as real processes, steered live by the control plane.

:mod:`~meshware.demo.services` runs and stops the processes, :mod:`~meshware.demo.traffic`
drives requests and counts the answers, :mod:`~meshware.demo.view` renders them, and
:mod:`~meshware.demo.tour` holds the steps.
"""
