"""The Prefect adapter: the campaign flow, approvals as paused flow runs, the local API server.
Thin: it calls the engine."""

import os as _os
import sys as _sys


def _prefect_runner_dir(path: str) -> bool:
    return _os.path.isfile(_os.path.join(path or ".", "_workspace_runtime_bootstrap.py"))


# A process worker runs a crashed flow run's hooks from a script in prefect/runner/, which puts
# that directory on sys.path: its storage.py would shadow our `storage` package (and every crash
# would print an ImportError in the worker's log).
_sys.path[:] = [p for p in _sys.path if not _prefect_runner_dir(p)]
if _prefect_runner_dir(_os.path.dirname(getattr(_sys.modules.get("storage"), "__file__", None) or "/")):
    del _sys.modules["storage"]
