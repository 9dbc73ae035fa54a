"""Prior data at a campaign's creation: read every source its spec names, before anything is
written, into the ``PriorTrialsAdded`` that follows its ``CampaignCreated``.

Earlier campaigns are read from the campaign store; collections from the store's own MongoDB,
or from ``CLOSEDLOOP_PRIOR_MONGODB_URI`` (a URI with a password stays out of the spec file).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from campaigns import CampaignSpec, PriorTrialsAdded, SpecError, fold
from campaigns.prior import MAX_PRIOR_TRIALS, from_campaign, from_documents, prior_event
from flows.app.settings import Settings

if TYPE_CHECKING:
    from storage import MongoEventStore

__all__ = ["read_prior_data"]


def read_prior_data(spec: CampaignSpec, campaign_id: str, store: MongoEventStore, settings: Settings,
                    actor: str, seq: int = 2) -> PriorTrialsAdded | None:
    """The ``PriorTrialsAdded`` of the spec's ``prior_data`` (None when it names none).

    Raises:
        SpecError: a source campaign does not exist (or is this one), a filter is refused, or
            the data does not fit the spec (``campaigns.prior``): one line naming the source.
        StorageError: a database cannot be reached.
    """
    if not spec.prior_data:
        return None
    from storage.prior import MISSING, read_documents

    read = []
    connection = None
    for i, source in enumerate(spec.prior_data):
        where = f"prior_data[{i}]"
        if source.campaign is not None:
            if source.campaign == campaign_id:
                raise SpecError(f"{where}: campaign {campaign_id!r} cannot start from its own trials",
                                "name an earlier campaign")
            state = fold(store.read(source.campaign))
            state.campaign_id = source.campaign
            read.append(from_campaign(spec, where, state))
            continue
        m = source.mongodb
        assert m is not None
        uri = settings.prior_mongodb_uri
        connection = "CLOSEDLOOP_PRIOR_MONGODB_URI" if uri is not None else "the campaign store"
        paths = sorted({*m.parameters.values(), *m.metrics.values()})
        docs = read_documents(store if uri is None else uri.get_secret_value(), m.database, m.collection,
                              m.filter_text, paths, limit=MAX_PRIOR_TRIALS, where=where)
        read.append(from_documents(spec, where, source, ((d.id, d.values) for d in docs), MISSING))
    return prior_event(campaign_id, seq, actor, list(spec.prior_data), read, connection)
