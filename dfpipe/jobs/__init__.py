"""Job definitions: a frozen config dataclass and a ``run(config) -> summary`` per job.

The command line (``dfpipe <job>``, ``python jobs/<job>.py``) lives in :mod:`dfpipe.cli`.
"""
