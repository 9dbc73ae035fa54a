"""Linear parameter constraints with an int parameter: the fast engine (``optimizer.mixed``)."""

from __future__ import annotations

import pytest

from tests.unit.test_optimizer import check_constraints_hold, constrained_spec

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::pandas.errors.Pandas4Warning")


def test_constraints_hold_with_an_int_parameter_too() -> None:
    # Once Ax's mixed optimizer (hit-and-run in the polytope, ~7-10 s per candidate); now the
    # fast engine's SLSQP and rounding, in tenths of a second.
    check_constraints_hold(constrained_spec(with_int=True), batches=3)  # 5 Sobol, 1 BoTorch
