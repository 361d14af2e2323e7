"""The latest-wins publisher both server engines push weights with."""

from __future__ import annotations

import threading

import pytest

from surge.rl._publisher import Job, Publisher


class Harness:
    """An engine's side of a Publisher: a closing flag, a gate that holds each push."""

    def __init__(self, *, drain_on_close: bool) -> None:
        self.cond = threading.Condition()
        self.closing = False
        self.resync = False
        self.started = threading.Semaphore(0)  # released as each push begins
        self.gate = threading.Semaphore(0)
        self.pushed: list[int | None] = []
        self.errors: list[BaseException] = []
        self.publisher = Publisher(
            self.cond,
            name="test-publisher",
            push=self.push,
            on_error=self.errors.append,
            stopping=lambda: self.closing,
            drain_on_close=drain_on_close,
            wake=lambda: self.resync,
        )
        self.publisher.start()

    def push(self, job: Job | None) -> None:
        assert threading.current_thread().name == "test-publisher"
        assert self.publisher.pushing
        self.started.release()
        self.gate.acquire()
        if job is None:
            self.resync = False
        elif job[1] < 0:
            raise RuntimeError("the server said no")
        with self.cond:
            self.pushed.append(None if job is None else job[1])
            self.cond.notify_all()

    def wait_pushed(self, count: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.pushed) >= count, timeout=10)

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        self.publisher.join(timeout=10)


def test_a_newer_job_replaces_one_not_yet_started_and_versions_only_grow() -> None:
    h = Harness(drain_on_close=True)
    h.publisher.put(([], 1), confirmed=-1)
    assert h.started.acquire(timeout=10)  # 1 is being pushed: queue 2 and 3 behind it
    h.publisher.put(([], 2), confirmed=-1)
    h.publisher.put(([], 3), confirmed=-1)
    with pytest.raises(ValueError, match="must increase: have 3, got 3"):
        h.publisher.put(([], 3), confirmed=-1)
    h.gate.release(2)
    h.wait_pushed(2)
    assert h.pushed == [1, 3]
    with pytest.raises(ValueError, match="must increase: have 3, got 2"):
        h.publisher.put(([], 2), confirmed=3)
    h.close()
    assert h.errors == []


@pytest.mark.parametrize("drain", [True, False])
def test_close_pushes_the_pending_job_only_when_draining(drain: bool) -> None:
    h = Harness(drain_on_close=drain)
    h.publisher.put(([], 1), confirmed=-1)
    assert h.started.acquire(timeout=10)
    with h.cond:
        h.publisher.put(([], 2), confirmed=-1)
        h.closing = True
        h.cond.notify_all()
    h.gate.release(2)
    h.publisher.join(timeout=10)
    assert not h.publisher._thread.is_alive()
    assert h.pushed == ([1, 2] if drain else [1])


def test_wake_runs_push_none_ahead_of_the_pending_job_and_requeue_keeps_the_newest() -> None:
    h = Harness(drain_on_close=True)
    with h.cond:
        h.resync = True
        h.publisher.put(([], 5), confirmed=-1)
    h.publisher.requeue(([], 4))  # a newer job is already waiting: it stays
    h.gate.release(2)
    h.wait_pushed(2)
    assert h.pushed == [None, 5]
    h.close()


def test_a_push_that_raises_ends_the_thread_and_reaches_on_error() -> None:
    h = Harness(drain_on_close=True)
    h.publisher.put(([], -1), confirmed=-2)  # a negative version: the harness raises
    h.gate.release()
    h.publisher.join(timeout=10)
    assert not h.publisher._thread.is_alive()
    assert [str(e) for e in h.errors] == ["the server said no"]
