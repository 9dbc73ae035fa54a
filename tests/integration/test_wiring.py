"""Settings and live objects passed explicitly: the run's wiring, handed to the flow in-process,
and leases held through an object, not a module global (issue 15)."""

from __future__ import annotations

import threading
import uuid

import pytest

from campaigns import CampaignLockedError
from flows.app.lease import Leases, hold_lease
from flows.app.settings import Settings
from flows.app.wiring import Wiring, current_wiring, wired


def test_a_flow_gets_the_wiring_handed_to_it_and_otherwise_reads_its_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOSEDLOOP_MONGODB_DATABASE", "from_the_environment")
    assert current_wiring().settings.mongodb_database == "from_the_environment"  # a worker's flow run
    handed = Wiring(Settings(mongodb_database="handed")).connected_to(mqtt_url="mqtt://u:p@h:1883",
                                                                      mongodb_uri="mongodb://h:27017")
    seen: list[Wiring] = []
    with wired(handed):
        assert current_wiring() is handed
        other = threading.Thread(target=lambda: seen.append(current_wiring()))  # another thread: not handed
        other.start()
        other.join()
    assert seen[0].settings.mongodb_database == "from_the_environment"
    assert current_wiring().settings.mongodb_database == "from_the_environment"
    assert handed.settings.mqtt_url is not None and handed.settings.mqtt_url.get_secret_value() == "mqtt://u:p@h:1883"
    assert "u:p" not in repr(handed)  # the credential stays a secret


def test_a_lease_is_reentrant_through_one_leases_and_exclusive_across_two(mongo_uri: str) -> None:
    database, campaign = f"cl_wiring_{uuid.uuid4().hex[:8]}", "c"
    mine = Leases()
    with hold_lease(mongo_uri, database, campaign, leases=mine) as outer:
        with hold_lease(mongo_uri, database, campaign, leases=mine) as inner:  # the flow inside the CLI's run
            assert inner is outer and mine.held(campaign) is outer
        assert mine.held(campaign) is outer  # still held by the outer run
        with pytest.raises(CampaignLockedError), hold_lease(mongo_uri, database, campaign, leases=Leases()):
            pass
    assert mine.held(campaign) is None
    with hold_lease(mongo_uri, database, campaign) as again:  # released: anyone may take it now
        assert again.lost_error() is None
