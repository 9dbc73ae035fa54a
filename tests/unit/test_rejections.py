"""The rejection budget (flows.engine.rejections): every rejected message counted once, few events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from flows.engine.rejections import FULL_PER_BUCKET, KINDS, MAX_EVENTS_PER_RUN, SUMMARY_INTERVAL_S, RejectionBudget, kind_of

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", None]), st.sampled_from([*KINDS, "made-up"]),
                          st.floats(0, 200)), max_size=3000))
def test_every_rejection_is_counted_once_within_the_bound(messages: list[tuple[str | None, str, float]]) -> None:
    """Issue 14 item 19: however many messages, in whatever order and pace, the events written
    (in full + summaries) stay within 32 + one per bucket, and their counts add up exactly."""
    now = [0.0]
    budget = RejectionBudget(lambda: now[0])
    full = summarized = events = 0
    for i, (device, kind, gap) in enumerate(messages):
        now[0] += gap
        if budget.admit(device, kind, T0 + timedelta(seconds=i), f"reason {i}"):
            full += 1
            events += 1
        due = budget.due()
        events += len(due)
        summarized += sum(s.count for s in due)
    final = budget.due(final=True)
    summarized += sum(s.count for s in final)
    assert full + summarized == len(messages)
    assert events <= MAX_EVENTS_PER_RUN
    assert events + len(final) <= MAX_EVENTS_PER_RUN + 3 * len(KINDS)
    assert all(s.first_time <= s.last_time and s.count >= 1 and s.kind in KINDS for s in final)


def test_first_few_in_full_then_doubling_then_by_time() -> None:
    """Issue 14 item 19: a bucket's first 3 are logged in full, then a summary when its count
    doubles (6, 12, ...) or a minute has passed, whichever comes first."""
    now = [0.0]
    budget = RejectionBudget(lambda: now[0])
    admitted = [budget.admit("a", "not_json", T0, "x") for _ in range(FULL_PER_BUCKET)]
    assert admitted == [True] * FULL_PER_BUCKET
    assert not budget.admit("a", "not_json", T0, "x") and budget.due() == []
    for _ in range(2 * FULL_PER_BUCKET - FULL_PER_BUCKET - 1):
        budget.admit("a", "not_json", T0, "x")
    assert [s.count for s in budget.due()] == [FULL_PER_BUCKET]  # the 4th to 6th
    budget.admit("a", "not_json", T0 + timedelta(seconds=5), "y")
    assert budget.due() == []
    now[0] += SUMMARY_INTERVAL_S
    (summary,) = budget.due()
    assert (summary.count, summary.example, summary.last_time) == (1, "y", T0 + timedelta(seconds=5))


def test_hub_reasons_have_kinds() -> None:
    assert kind_of("payload is not JSON: Expecting value") == "not_json"
    assert kind_of("payload is 300000 bytes, over the 262144-byte limit") == "too_large"
    assert kind_of("invalid status: state: Input should be 'idle'") == "invalid_status"
    assert kind_of("something new") == "other"
