"""The event store: the campaign log in MongoDB (pymongo), the embedded local server, exports.

Public names::

    MongoEventStore   append / read / last_seq / exists / list_campaigns on a MongoDB URI
    CampaignSummary   one campaign as ``list_campaigns`` reports it
    MongoLease        one writer per campaign: acquire / renew / release, a heartbeat thread
    LeaseInfo         the lease as ``acquire`` took it (and whose stale lease it replaced)
    MongoCommandInbox, Command   people's commands (approve, change, pause, stop) for a running campaign
    EmbeddedMongo     the shared local nx-27017 server used when no URI is configured
    export_rows, export_columns, write_csv, write_json   one row per trial, for spreadsheets and notebooks
    redact_uri        a MongoDB URI safe to print (password replaced by ``***``)

Every name is imported on first use, from the module that holds it: `closedloop status` reads
the log without loading the lease, the inbox or the exports.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and readers see; at run time, __getattr__ below
    from storage._uri import redact_uri
    from storage.commands import Command, MongoCommandInbox
    from storage.embedded import EmbeddedMongo
    from storage.export import export_columns, export_rows, write_csv, write_json
    from storage.lease import LeaseInfo, MongoLease
    from storage.mongo import CampaignSummary, MongoEventStore

__all__ = [
    "CampaignSummary",
    "Command",
    "EmbeddedMongo",
    "LeaseInfo",
    "MongoCommandInbox",
    "MongoEventStore",
    "MongoLease",
    "export_columns",
    "export_rows",
    "redact_uri",
    "write_csv",
    "write_json",
]

_MODULES = {
    "redact_uri": "storage._uri",
    **dict.fromkeys(["Command", "MongoCommandInbox"], "storage.commands"),
    "EmbeddedMongo": "storage.embedded",
    **dict.fromkeys(["export_columns", "export_rows", "write_csv", "write_json"], "storage.export"),
    **dict.fromkeys(["LeaseInfo", "MongoLease"], "storage.lease"),
    **dict.fromkeys(["CampaignSummary", "MongoEventStore"], "storage.mongo"),
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
