"""Dump a campaign's event log, as stored, to JSON lines: the test data of old log shapes.

Usage: CLOSEDLOOP_HOME=HOME python tests/data/legacy/dump_log.py CAMPAIGN OUT.jsonl

Reads the documents of the embedded database under HOME exactly as the version that wrote
them stored them (only MongoDB's ``_id`` left out), so later versions can be tested on them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pymongo import MongoClient

from storage import EmbeddedMongo


def main() -> None:
    campaign, out = sys.argv[1], Path(sys.argv[2])
    with EmbeddedMongo(Path(os.environ["CLOSEDLOOP_HOME"])) as server:
        client: MongoClient[dict[str, object]] = MongoClient(server.uri)
        docs = client["closedloop"]["events"].find({"campaign_id": campaign}, {"_id": 0}).sort("seq", 1)
        out.write_text("".join(json.dumps(d, sort_keys=True) + "\n" for d in docs))
        client.close()


if __name__ == "__main__":
    main()
