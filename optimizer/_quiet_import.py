"""Drop the one INFO line Ax logs while it is imported (before ``quiet_ax`` can run).

Imported by ``optimizer/__init__.py`` before anything imports ``ax``: the filter sits on the
logger Ax creates later under the same name, and drops only that message.
"""

from __future__ import annotations

import logging

_IMPORT_LOGGER = "ax.storage.sqa_store.with_db_settings_base"


def _not_the_import_banner(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Ax SQL storage initialized")


logging.getLogger(_IMPORT_LOGGER).addFilter(_not_the_import_banner)
