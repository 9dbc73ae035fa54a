"""Linear parameter constraints with an int parameter: BoTorch's mixed optimizer (slow, ~10 s)."""

from __future__ import annotations

import pytest

from tests.unit.test_optimizer import check_constraints_hold, constrained_spec

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::pandas.errors.Pandas4Warning")


def test_constraints_hold_with_an_int_parameter_too() -> None:
    # The mixed optimizer samples the constrained polytope with BoTorch's default hit-and-run
    # settings (it accepts no option to lower them): ~7-10 s per candidate on 2 cores.
    check_constraints_hold(constrained_spec(with_int=True), batches=3)  # 5 Sobol, 1 BoTorch
