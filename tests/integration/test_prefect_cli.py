"""Prefect's own CLI works against the Prefect server closedloop runs with (the versions pinned
in pyproject): a lab uses it beside ours, and deployments are made through the same queries."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PREFECT = str(Path(sys.executable).parent / "prefect")


@pytest.mark.parametrize("command", [["flow-run", "ls"], ["deployment", "ls"], ["work-pool", "ls"]])
def test_prefect_s_list_commands_answer(command: list[str], prefect_server: dict[str, str]) -> None:
    """With fastapi 0.152 the server answered 422 to these (its client sends null limits)."""
    out = subprocess.run([PREFECT, *command], env={**os.environ, **prefect_server}, capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Unprocessable Entity" not in out.stdout + out.stderr  # (a bare "422" can be in a run's id)
