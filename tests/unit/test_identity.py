"""Campaign identity: instances, request ids and MQTT client ids (campaigns.identity)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from campaigns import CampaignCreated, event_from_doc, event_to_doc, fold, load_spec
from campaigns.identity import client_id, new_instance, request_id

SPEC = load_spec(Path(__file__).parents[2] / "campaigns" / "examples" / "branin.yaml")
NAMES = st.from_regex(r"[A-Za-z0-9_.:-]{1,300}", fullmatch=True)


def test_long_names_sharing_a_prefix_get_their_own_client_ids() -> None:
    """Issue 14 item 3: client ids were the name cut at 128 characters, so long names that
    shared their first 128 characters shared one broker session."""
    a, b = "x" * 130 + "-a", "x" * 130 + "-b"
    instance = new_instance()
    assert client_id(a, instance) != client_id(b, instance)
    assert client_id(a, instance) == client_id(a, instance)  # stable: the same at every restart
    assert client_id(a, instance) != client_id(a, new_instance())  # same name, another campaign


@given(NAMES, NAMES, st.from_regex(r"[0-9a-f]{16}", fullmatch=True))
def test_client_ids_are_short_readable_and_differ_with_the_campaign(a: str, b: str, instance: str) -> None:
    cid = client_id(a, instance)
    assert len(cid) <= 68 and re.fullmatch(r"closedloop-[A-Za-z0-9_.-]{1,40}-[0-9a-f]{16}", cid)
    assert cid.startswith("closedloop-" + re.sub(r"[^A-Za-z0-9_.-]", "_", a[:40]))
    assert (client_id(b, instance) == cid) == (a == b)


def test_request_ids_differ_by_instance_and_attempt() -> None:
    one, other = new_instance(), new_instance()
    assert one != other and re.fullmatch(r"[0-9a-f]{16}", one)
    ids = {request_id("branin", i, "3", n) for i in (one, other) for n in (1, 2)}
    assert len(ids) == 4 and all(r.startswith("branin:") for r in ids)
    assert request_id("branin", one, "3", 2) == f"branin:{one}:3:2"


def _old_created(campaign_id: str, time: datetime, actor: str = "user:ana") -> dict[str, object]:
    """A CampaignCreated as code before instances wrote it: no ``instance`` key."""
    doc = event_to_doc(CampaignCreated(campaign_id=campaign_id, seq=1, actor=actor, spec=SPEC, time=time))
    del doc["instance"]
    return doc


def test_old_logs_fold_to_a_stable_instance_of_their_own() -> None:
    """Issue 14 item 1: a log written before instances existed still folds, to an instance
    derived from its CampaignCreated: the same at every fold, another for another campaign."""
    t = datetime(2026, 11, 2, 9, 30, 0, 123000, tzinfo=UTC)
    doc = _old_created("branin", t)
    first = fold([event_from_doc(doc)]).instance
    assert first is not None and re.fullmatch(r"[0-9a-f]{16}", first)
    assert fold([event_from_doc(dict(doc))]).instance == first
    assert fold([event_from_doc(_old_created("branin", t.replace(microsecond=124000)))]).instance != first
    assert fold([event_from_doc(_old_created("branin", t, actor="user:bo"))]).instance != first
    assert fold([event_from_doc(_old_created("other", t))]).instance != first


def test_new_logs_keep_the_instance_drawn_at_creation() -> None:
    token = new_instance()
    created = CampaignCreated(campaign_id="branin", seq=1, actor="user:ana", spec=SPEC, instance=token)
    assert fold([event_from_doc(event_to_doc(created))]).instance == token
