"""Admission control: never start a generation that could not be trained within the bound.

Tickets number prompt groups in the order they are admitted; optimizer step ``s``
consumes tickets ``[s*G, (s+1)*G)`` (``G`` groups per step), in order. A generation
started with weights of version ``v`` and consumed at step ``s`` lags ``s - v`` versions,
so admitting ticket ``t`` only once the generator holds version ``>= t // G - k`` bounds
every lag by ``k`` — by construction, not by throwing work away. Consuming in ticket order
means a long generation can hold the trainer up but never be overtaken and starved.

Dropping a sample whose lag exceeds the bound stays as a backstop (it can happen only if
the bound is tightened on resume); a dropped ticket goes back to the head of the line.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from surge.rl._rollout import Rollout

__all__ = ["Admission", "RolloutBuffer"]


@dataclass
class Admission:
    """Which tickets may start generating now. Pure bookkeeping; the caller locks.

    ``inflight`` counts tickets submitted and not yet completed.
    """

    groups_per_step: int
    max_staleness: int
    max_inflight: int
    next_ticket: int = 0
    inflight: int = 0
    retry: list[int] = field(default_factory=list)

    def step_of(self, ticket: int) -> int:
        return ticket // self.groups_per_step

    def min_version(self, ticket: int) -> int:
        """The oldest weights ticket ``ticket`` may be generated with."""
        return self.step_of(ticket) - self.max_staleness

    def admit(self, version: int, queued: int, queue_limit: int) -> list[int]:
        """Tickets that may start now with weights ``version``; marks them in flight.

        Three gates: the staleness bound, ``max_inflight`` generations at once, and room
        in the queue for everything in flight plus what is already waiting.
        """
        tickets: list[int] = []
        while True:
            busy = self.inflight + len(tickets)
            # A retried ticket is one the trainer is waiting for: it skips the queue gate.
            if busy >= self.max_inflight or (busy + queued >= queue_limit and not self.retry):
                break
            candidate = self.retry[0] if self.retry else self.next_ticket
            if self.min_version(candidate) > version:
                break
            if self.retry:
                self.retry.pop(0)
            else:
                self.next_ticket += 1
            tickets.append(candidate)
        self.inflight += len(tickets)
        return tickets


class RolloutBuffer:
    """Completed rollouts waiting for the trainer, handed out strictly by ticket."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self._items: dict[int, Rollout] = {}
        self.error: BaseException | None = None

    def put(self, rollouts: list[Rollout]) -> None:
        with self.cond:
            for r in rollouts:
                self._items[r.ticket] = r
            self.cond.notify_all()

    def fail(self, error: BaseException) -> None:
        with self.cond:
            self.error = error
            self.cond.notify_all()

    def depth(self) -> int:
        with self.cond:
            return len(self._items)

    def pop(self, ticket: int) -> Rollout | None:
        """Remove and return ``ticket`` if it has arrived (caller holds ``cond``)."""
        return self._items.pop(ticket, None)

    def snapshot(self) -> list[Rollout]:
        with self.cond:
            return [self._items[t] for t in sorted(self._items)]

    def clear(self) -> None:
        with self.cond:
            self._items.clear()
