"""Every table the CLI prints, formatted one way (``tabulate``'s ``simple`` format).

Cells are shown as given (numbers are formatted by the caller, never re-parsed), so what a
table says is exactly what ``--json`` or ``export`` would say, and a column of ids keeps its
text alignment.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["table"]


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, indent: str = "") -> str:
    """The rows under their headers, columns aligned, a dashed line under the headers.

    Args:
        headers: One per column.
        rows: The cells; ``None`` shows as ``-``.
        indent: Put before every line (a table under a heading).
    """
    # imported on first use: `status` and most commands print no table
    from tabulate import tabulate

    text = tabulate([["-" if c is None else c for c in row] for row in rows], headers=list(headers),
                    tablefmt="simple", disable_numparse=True)
    return "\n".join(indent + line.rstrip() for line in text.splitlines())
