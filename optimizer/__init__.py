"""The Ax adapter: campaign spec → Ax experiment; suggest / complete / fail; rebuild from the log.

This is the only package that imports ``ax``. Its public names::

    AxOptimizer                    suggest(n), complete(id, measurements), fail(id, reason),
                                   reject(id, reason), unobserved_metrics,
                                   AxOptimizer.rebuild(spec, trials)
    SobolSampler, SobolPoint       the scrambled Sobol initialization, position by position
    default_initialization_trials  5 unless the spec says
"""

from optimizer import _quiet_import  # noqa: F401  (must run before ax is imported)
from optimizer.ax_optimizer import AxOptimizer, default_initialization_trials
from optimizer.sobol import SobolPoint, SobolSampler

__all__ = ["AxOptimizer", "SobolPoint", "SobolSampler", "default_initialization_trials"]
