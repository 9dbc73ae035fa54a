"""The published documents: docs/asyncapi.yaml and docs/events.schema.json.

They are generated from the models by ``python docs/generate.py`` and checked in. These tests
say when a checked-in file is stale, validate the AsyncAPI document against the official
AsyncAPI 3.0.0 JSON Schema (vendored from npm's ``@asyncapi/specs``, see
tests/data/asyncapi-3.0.0.schema.md), and check that what the documents say agrees with what
the code does: the payload schemas accept what the parsers accept, the topics are the topics,
the client id pattern matches the client ids, and every stored event fits the event schema.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

from campaigns.errors import DeviceMessageError
from campaigns.events import event_from_doc, event_to_doc
from campaigns.identity import client_id
from devices import Topics, parse_request, parse_result, parse_status

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("closedloop_docs_generate", ROOT / "docs" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


generate = _load_generator()


@pytest.fixture(scope="module")
def asyncapi() -> dict[str, Any]:
    return yaml.safe_load(generate.ASYNCAPI.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def asyncapi_validator() -> jsonschema.Draft7Validator:
    schema = json.loads((DATA / "asyncapi-3.0.0.schema.json").read_text(encoding="utf-8"))
    # Formats checked too (uri needs rfc3986-validator): the AsyncAPI CLI checks them.
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


def test_checked_in_documents_are_what_the_command_generates() -> None:
    stale = [str(path.relative_to(ROOT)) for path in generate.stale()]
    assert not stale, f"{', '.join(stale)} differ from the models: run `{generate.COMMAND}` and commit the result"


def test_the_asyncapi_document_is_valid_asyncapi_3(asyncapi: dict[str, Any],
                                                   asyncapi_validator: jsonschema.Draft7Validator) -> None:
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
              for e in asyncapi_validator.iter_errors(asyncapi)]
    assert not errors, "docs/asyncapi.yaml is not valid AsyncAPI 3.0.0:\n" + "\n".join(errors[:10])
    assert asyncapi["asyncapi"] == "3.0.0"


@pytest.mark.parametrize("breakage", ["qos 3", "unknown action", "channel typo", "server without host",
                                      "relative url"])
def test_the_validator_refuses_a_broken_document(breakage: str, asyncapi: dict[str, Any],
                                                 asyncapi_validator: jsonschema.Draft7Validator) -> None:
    broken = json.loads(json.dumps(asyncapi))
    if breakage == "qos 3":
        broken["operations"]["sendStatus"]["bindings"]["mqtt"]["qos"] = 3
    elif breakage == "unknown action":
        broken["operations"]["sendStatus"]["action"] = "publish"
    elif breakage == "channel typo":
        broken["channels"]["status"]["adress"] = broken["channels"]["status"].pop("address")
    elif breakage == "server without host":
        del broken["servers"]["mqtt"]["host"]
    else:
        broken["info"]["externalDocs"] = {"url": "protocol.md"}  # the CLI says: must match format "uri"
    assert not asyncapi_validator.is_valid(broken)


def _payload_validator(asyncapi: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    # The component schema, with its $refs resolved against the document's components.
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                            "components": asyncapi["components"]})


_R = {"kind": "trial_result", "request_id": "r1", "trial_id": "3"}
_Q = {"kind": "run_trial", "request_id": "r1", "campaign_id": "c", "trial_id": "3"}
_S = {"device_id": "d1", "measures": ["y"]}
WIRE_CASES: list[tuple[str, dict[str, Any]]] = [
    ("TrialResult", {**_R, "status": "completed", "measurements": {"y": 1.5}}),
    ("TrialResult", {**_R, "status": "completed", "measurements": {"y": 2}}),
    ("TrialResult", {**_R, "status": "completed", "measurements": {"y": {"mean": 1.5, "sem": 0.1}}}),
    ("TrialResult", {**_R, "status": "completed", "measurements": {"y": {"mean": 1.5, "sem": None}}}),
    ("TrialResult", {**_R, "status": "completed", "measurements": {"y": None}}),
    ("TrialResult", {**_R, "status": "completed", "measurements": {"y": 1.0}, "firmware": "2.1"}),
    ("TrialResult", {**_R, "status": "failed", "error": "pump fault"}),
    ("TrialResult", {**_R, "status": "failed", "error": "pump fault", "measurements": {}}),
    ("TrialResult", {**_R, "status": "completed", "measurements": {}}),
    ("TrialResult", {**_R, "status": "completed"}),
    ("TrialResult", {**_R, "status": "failed"}),
    ("TrialResult", {**_R, "status": "failed", "error": ""}),
    ("TrialResult", {**_R, "status": "failed", "error": None}),
    ("TrialResult", {**_R, "status": "done", "measurements": {"y": 1.0}}),
    ("TrialResult", {**_R, "status": "completed", "measurements": {"y": True}}),
    ("TrialResult", {**_R, "status": "completed", "measurements": {"y": "1.5"}}),
    ("TrialResult", {**_R, "status": "completed", "measurements": {"y": {"mean": None}}}),
    ("TrialResult", {**_R, "status": "completed", "measurements": {"y": {"mean": 1.0, "sem": -0.1}}}),
    ("TrialResult", {**_R, "status": "completed", "measurements": {"y": {"sem": 0.1}}}),
    ("TrialResult", {**_R, "status": "completed", "measurements": [1.0]}),
    ("TrialResult", {**_R, "trial_id": 3, "status": "completed", "measurements": {"y": 1.0}}),
    ("TrialResult", {**_R, "request_id": "", "status": "completed", "measurements": {"y": 1.0}}),
    ("TrialResult", {k: v for k, v in _R.items() if k != "kind"} | {"status": "failed", "error": "x"}),
    ("TrialResult", {**_R, "kind": "run_trial", "status": "failed", "error": "x"}),
    ("RunTrial", {**_Q, "parameters": {"x": 0.5, "n": 3, "solvent": "water", "stir": True}}),
    ("RunTrial", {**_Q, "parameters": {}}),
    ("RunTrial", {**_Q, "parameters": {"x": None}}),
    ("RunTrial", {**_Q, "parameters": {"x": [1]}}),
    ("RunTrial", {**_Q, "trial_id": 3, "parameters": {}}),
    ("RunTrial", {k: v for k, v in _Q.items() if k != "kind"} | {"parameters": {}}),
    ("RunTrial", {k: v for k, v in _Q.items() if k != "campaign_id"} | {"parameters": {}}),
    ("DeviceStatus", {**_S, "state": "idle"}),
    ("DeviceStatus", {**_S, "state": "offline", "firmware": "2.1"}),
    ("DeviceStatus", {**_S, "state": "online"}),
    ("DeviceStatus", {**_S, "state": "idle", "device_id": ""}),
    ("DeviceStatus", {"state": "idle", "device_id": "d1"}),
    ("DeviceStatus", {**_S, "state": "idle", "measures": "y"}),
]
PARSERS = {"TrialResult": parse_result, "RunTrial": parse_request, "DeviceStatus": parse_status}


def _parses(name: str, payload: dict[str, Any]) -> bool:
    try:
        PARSERS[name](json.dumps(payload).encode())
    except DeviceMessageError:
        return False
    return True


@pytest.mark.parametrize(("name", "payload"), WIRE_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(WIRE_CASES)])
def test_a_payload_schema_accepts_what_the_parser_accepts(name: str, payload: dict[str, Any],
                                                          asyncapi: dict[str, Any]) -> None:
    by_schema = _payload_validator(asyncapi, name).is_valid(payload)
    assert by_schema == _parses(name, payload), (
        f"docs/asyncapi.yaml says {name} {json.dumps(payload)} is {'valid' if by_schema else 'invalid'}; "
        f"devices/messages.py says otherwise")


def test_the_cases_cover_both_answers() -> None:
    answers = {_parses(name, payload) for name, payload in WIRE_CASES}
    assert answers == {True, False}


def test_every_example_in_the_document_parses(asyncapi: dict[str, Any]) -> None:
    examples = [(name, example["payload"]) for name, message in asyncapi["components"]["messages"].items()
                for example in message["examples"]]
    assert {name for name, _ in examples} == set(PARSERS)
    for name, payload in examples:
        assert _parses(name, payload), (name, payload)
        assert _payload_validator(asyncapi, name).is_valid(payload), (name, payload)


def test_the_channels_are_the_topics_the_code_uses(asyncapi: dict[str, Any]) -> None:
    topics = Topics("lab2/closedloop")
    for channel in ("status", "requests", "results"):
        address = asyncapi["channels"][channel]["address"]
        concrete = address.replace("{prefix}", "lab2/closedloop").replace("{device_id}", "hplc-1")
        assert concrete == topics.topic("hplc-1", channel)  # type: ignore[arg-type]
        assert topics.parse(concrete) == ("hplc-1", channel)
    barrier = asyncapi["channels"]["barrier"]["address"]
    assert barrier == generate._BARRIER_TOPIC == "closedloop/_barrier"
    orchestrator = asyncapi["x-closedloop-orchestrator"]
    assert orchestrator["subscribes"] == ["{prefix}/devices/+/status", "{prefix}/devices/+/results"]
    assert orchestrator["unsubscribes"] == [barrier]


@pytest.mark.parametrize("campaign_id", ["branin", "a", "x" * 200, "lab 2/run #3 (ünïcode)", "b" * 40])
def test_the_documented_client_id_rule_matches_the_code(campaign_id: str, asyncapi: dict[str, Any]) -> None:
    orchestrator = asyncapi["x-closedloop-orchestrator"]
    cid = client_id(campaign_id, "0123456789abcdef")
    assert re.fullmatch(orchestrator["clientIdPattern"], cid), cid
    assert len(cid) <= orchestrator["clientIdMaxLength"]
    assert cid.isascii()


def test_every_stored_event_fits_the_event_schema() -> None:
    schema = json.loads(generate.EVENTS_SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    logs = sorted((DATA / "legacy").glob("*.jsonl"))
    assert logs
    kinds = set()
    for path in logs:
        for line in path.read_text(encoding="utf-8").splitlines():
            doc = event_to_doc(event_from_doc(json.loads(line)))  # as the code writes it today
            errors = [e.message[:200] for e in validator.iter_errors(doc)]
            assert not errors, (path.name, doc["kind"], errors[:3])
            kinds.add(doc["kind"])
    assert {"CampaignCreated", "TrialsSuggested", "TrialDispatched", "TrialCompleted"} <= kinds
    assert not validator.is_valid({**doc, "kind": "SearchSpaceChanged"})
    assert not validator.is_valid({k: v for k, v in doc.items() if k != "seq"})
