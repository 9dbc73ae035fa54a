"""The optimizer: campaign spec → suggestions; complete / fail; rebuild from the log.

The only package that imports ``ax`` (and BoTorch). Which engine suggests a campaign's trials
(closedloop's Sobol opening, the NumPy GP ``fast``, or Ax) is decided in ``engines``, which
loads without Ax (``closedloop validate`` reports it in a blink); the names that need Ax are
loaded on first use. Its public names::

    AxOptimizer                    suggest(n), complete(id, measurements), fail(id, reason),
                                   reject(id, reason), engine, uses_model(n),
                                   AxOptimizer.rebuild(spec, trials)
    EngineChoice, model_engine     the engine a spec's ``optimizer.method`` names, and why
    SobolSampler, SobolPoint       the scrambled Sobol initialization, position by position
    default_initialization_trials  5 unless the spec says
"""

from typing import TYPE_CHECKING, Any

from optimizer import _quiet_import  # noqa: F401  (must run before ax is imported)
from optimizer.engines import EngineChoice, default_initialization_trials, model_engine

if TYPE_CHECKING:
    from optimizer.ax_optimizer import AxOptimizer
    from optimizer.sobol import SobolPoint, SobolSampler

__all__ = [
    "AxOptimizer",
    "EngineChoice",
    "SobolPoint",
    "SobolSampler",
    "default_initialization_trials",
    "model_engine",
]

_LAZY = {"AxOptimizer": "optimizer.ax_optimizer", "SobolPoint": "optimizer.sobol", "SobolSampler": "optimizer.sobol"}


def __getattr__(name: str) -> Any:
    # Ax, BoTorch and torch take seconds to import: loaded when a name that needs them is used.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'optimizer' has no attribute {name!r}")
