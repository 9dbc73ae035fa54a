"""The Prefect adapter: the campaign flow, approvals as paused flow runs, the local API server.
Thin: it calls the engine."""

import os as _os
import sys as _sys

# A process worker runs a crashed flow run's hooks from a script in prefect/runner/, which puts
# that directory on sys.path: its storage.py would shadow our `storage` package (and every crash
# would print an ImportError in the worker's log).
for _path in [p for p in _sys.path if _os.path.isfile(_os.path.join(p or ".", "_workspace_runtime_bootstrap.py"))]:
    _sys.path.remove(_path)
if _os.path.isfile(_os.path.join(_os.path.dirname(getattr(_sys.modules.get("storage"), "__file__", None) or "/"),
                                 "_workspace_runtime_bootstrap.py")):
    del _sys.modules["storage"]
