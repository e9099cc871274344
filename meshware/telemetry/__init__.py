"""Telemetry: tracing (:mod:`~meshware.telemetry.tracing`, :mod:`~meshware.telemetry.spans`),
where spans go (:mod:`~meshware.telemetry.export`) and how the config sets the sampling rate
(:mod:`~meshware.telemetry.policy`)."""
