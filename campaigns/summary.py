"""``CampaignSummary``: one campaign as an event log lists it (``closedloop list``)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

__all__ = ["CampaignSummary"]


class CampaignSummary(BaseModel):
    """One line of ``closedloop list``: what a campaign is and how far its log goes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    campaign_id: str
    name: str
    created_at: datetime
    last_seq: int
    finished: bool
