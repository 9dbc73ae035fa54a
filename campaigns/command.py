"""A person's command for a running campaign (approve, change, pause, stop), as it waits in an inbox.

Pure data, so the engine can read commands without a database driver; the inboxes that carry
them live elsewhere (``storage.MongoCommandInbox``, ``flows.engine.memory.MemoryCommandInbox``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

__all__ = ["Command", "CommandKind", "CommandState"]

CommandKind = Literal["approve", "change", "pause", "stop"]
CommandState = Literal["pending", "claimed", "applied", "refused", "withdrawn"]


class Command(BaseModel):
    """A person's request for a campaign, waiting to be applied by its orchestrator."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    command_id: str
    campaign_id: str
    kind: CommandKind
    payload: dict[str, Any]
    by: str
    reason: str
    submitted_at: datetime
    state: CommandState = "pending"
    seq: int | None = None
    error: str | None = None
