"""Who a campaign is on the wire: its instance, its request ids and its MQTT client id.

A campaign's name is not unique: two homes, two databases or two labs can each hold a
campaign ``branin``, and both may share one instrument and one broker. What tells them apart
is the campaign *instance*: a random token drawn once, when the campaign is created, and kept
in its ``CampaignCreated`` event. A log written before instances existed gets one derived from
what its ``CampaignCreated`` holds (campaign id, time, actor), the same at every fold.

Request ids and the orchestrator's client id are derived from ``(campaign id, instance)``, so
they are unique across every campaign that may share an instrument or a broker, and stable
across the restarts of one campaign (they come from its log). Pure: stdlib only.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime

__all__ = ["client_id", "fallback_instance", "new_instance", "request_id"]

_INSTANCE_HEX = 16  # 64 bits: no two campaigns that share an instrument draw the same one
_CLIENT_PREFIX = "closedloop-"
_READABLE_CHARS = 40  # of the campaign id, for people reading a broker's log
_NOT_READABLE = re.compile(r"[^A-Za-z0-9_.-]")


def new_instance() -> str:
    """A fresh random instance token (16 hex digits), drawn once when a campaign is created."""
    return secrets.token_hex(_INSTANCE_HEX // 2)


def _digest(*parts: str, chars: int = _INSTANCE_HEX) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:chars]


def fallback_instance(campaign_id: str, created_at: datetime, actor: str) -> str:
    """The instance of a campaign whose ``CampaignCreated`` carries none (written by older code).

    Derived from what that event holds, so every fold of the same log gives the same one; two
    same-named campaigns created at another millisecond or by another user get different ones.
    """
    return _digest("closedloop-instance", campaign_id, created_at.isoformat(), actor)


def request_id(campaign_id: str, instance: str, trial_id: str, attempt: int) -> str:
    """The request id of one attempt of one trial: ``{campaign}:{instance}:{trial}:{attempt}``.

    Unique per attempt and per campaign instance; a re-send of the same attempt reuses the id
    the log holds (it is never derived again).
    """
    return f"{campaign_id}:{instance}:{trial_id}:{attempt}"


def client_id(campaign_id: str, instance: str) -> str:
    """The orchestrator's MQTT client id for a campaign: ``closedloop-<name, cut>-<hash>``.

    The readable part is at most 40 characters of the campaign id (anything but letters,
    digits, ``_ . -`` becomes ``_``); the 16 hex digits hash the whole id and the instance, so
    campaigns whose names share a long prefix, or that share a name, never share a session.
    At most 68 ASCII characters, the same at every restart of the campaign.
    """
    readable = _NOT_READABLE.sub("_", campaign_id[:_READABLE_CHARS])
    return f"{_CLIENT_PREFIX}{readable}-{_digest('closedloop-client', campaign_id, instance)}"
