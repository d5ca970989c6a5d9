"""DeleteSchedule reads the revision out of an etag (to delete in one conditional statement):
that must agree with Schedule.etag, the one place that spells etags."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from scheduler_host.domain.schedule import Schedule
from scheduler_host.service.schedules import revision_in_etag

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def schedule(revision: int) -> Schedule:
    return Schedule(
        id=uuid.uuid4(),
        install_id=uuid.uuid4(),
        tenant_id="t",
        endpoint_id=uuid.uuid4(),
        endpoint_method="POST",
        endpoint_path="/sync",
        name=None,
        cron="0 * * * *",
        timezone="UTC",
        enabled=True,
        payload=None,
        next_run_time=None,
        last_run_time=None,
        last_run_status=None,
        last_error=None,
        create_time=T0,
        update_time=T0,
        revision=revision,
    )


def test_the_revision_of_an_etag_of_the_schedule() -> None:
    for revision in (1, 2, 17, 123456789):
        s = schedule(revision)
        assert revision_in_etag(s.etag, s.id) == revision


def test_text_that_is_no_etag_of_the_schedule_names_no_revision() -> None:
    s = schedule(3)
    other = schedule(3)
    assert revision_in_etag(s.etag, other.id) is None or s.id.hex[:8] == other.id.hex[:8]
    for text in ("", "3", "x-" + s.id.hex[:8], "-3-" + s.id.hex[:8], "3-", "3" * 40 + "-"):
        assert revision_in_etag(text, s.id) is None, text
    assert revision_in_etag(" 3-" + s.id.hex[:8], s.id) is None


def test_non_ascii_digits_are_no_revision() -> None:
    s = schedule(2)
    assert revision_in_etag("\u00b2-" + s.id.hex[:8], s.id) is None
    assert revision_in_etag(f"{2**31}-" + s.id.hex[:8], s.id) is None
    assert revision_in_etag(f"{2**31 - 1}-" + s.id.hex[:8], s.id) == 2**31 - 1
