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
"""

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
