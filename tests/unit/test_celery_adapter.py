"""apply_to_celery, the one adapter from a decision to Celery: a saved failure raises JobFailed (a failed task,
still acknowledged), a Retry re-sends through task.retry, a refused re-send keeps the message, the rest return."""

from __future__ import annotations

from typing import Any

import pytest
from celery.exceptions import Reject
from celery.exceptions import Retry as CeleryRetry

from videoscore.worker.service.decision import Dropped, Failed, Retry, Skipped, Succeeded, Superseded
from videoscore.worker.service.tasks import JobFailed, apply_to_celery


class FakeTask:
    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.retries: list[dict[str, Any]] = []

    def retry(self, **options: Any) -> Exception:
        self.retries.append(options)
        if self.refuse:
            raise Reject("broker down", requeue=False)
        return CeleryRetry("re-sent")


def test_a_saved_failure_raises_job_failed_with_its_kind_and_message() -> None:
    with pytest.raises(JobFailed) as raised:
        apply_to_celery(FakeTask(), "j", Failed("video_not_found", "no such file"))  # type: ignore[arg-type]
    assert (raised.value.kind, raised.value.message) == ("video_not_found", "no such file")
    assert str(raised.value) == "video_not_found: no such file"


@pytest.mark.parametrize("decision", [Succeeded(), Superseded(), Skipped("dup"), Dropped("bad id")])
def test_every_other_end_returns_so_celery_acks_it_as_succeeded(decision: Any) -> None:
    task = FakeTask()
    assert apply_to_celery(task, "j", decision) is None  # type: ignore[arg-type]
    assert task.retries == []


def test_a_retry_re_sends_and_a_refused_re_send_returns_the_message_to_the_broker() -> None:
    task = FakeTask()
    with pytest.raises(CeleryRetry):
        apply_to_celery(task, "j", Retry(2.5, "flaky"))  # type: ignore[arg-type]
    assert task.retries == [{"countdown": 2.5, "max_retries": None}]
    with pytest.raises(Reject) as rejected:
        apply_to_celery(FakeTask(refuse=True), "j", Retry(1.0, "flaky"))  # type: ignore[arg-type]
    assert rejected.value.requeue
