"""The optimizer: campaign spec → Ax experiment; suggest / complete / fail; rebuild from the log.

This is the only package that imports ``ax`` (and BoTorch). Bayesian optimization on a
continuous space runs in ``fastbo`` (``FastGP``, ``acquisition``: Ax's model and acquisition
in NumPy); elsewhere Ax generates. Its public names::

    AxOptimizer                    suggest(n), complete(id, measurements), fail(id, reason),
                                   reject(id, reason), unobserved_metrics, last_fit_trials,
                                   AxOptimizer.rebuild(spec, trials)
    SobolSampler, SobolPoint       the scrambled Sobol initialization, position by position
    default_initialization_trials  5 unless the spec says
"""

from optimizer import _quiet_import  # noqa: F401  (must run before ax is imported)
from optimizer.ax_optimizer import AxOptimizer, default_initialization_trials
from optimizer.sobol import SobolPoint, SobolSampler

__all__ = ["AxOptimizer", "SobolPoint", "SobolSampler", "default_initialization_trials"]
