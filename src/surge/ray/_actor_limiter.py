"""The shared budget on Ray: the ledger in one named actor per cluster.

An actor runs one method at a time, so `exchange` is atomic without locks. Workers reach
it by name (`surge-limiter` in the `surge` namespace); the process that creates it owns
it, so `surge.ray.Processor` creates it on the driver before any worker starts, and a
worker that dies takes nothing with it but its leases, which expire.
"""

from __future__ import annotations

import time
from typing import Any

from surge._shared._ledger import Message, State, exchange, new_state

ACTOR_NAME = "surge-limiter"
NAMESPACE = "surge"


class LedgerActor:
    """Holds the state of every shared key in this cluster."""

    def __init__(self) -> None:
        self._states: dict[str, State] = {}

    def exchange(self, key: str, request: Message) -> Message:
        return exchange(self._states.setdefault(key, new_state()), request, time.monotonic())

    def state(self, key: str) -> State:
        return self._states.get(key, new_state())


def ledger_actor() -> Any:
    """The cluster's ledger actor, created here if no process has yet."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError(
            "shared='ray' needs a connected Ray. HINT: call ray.init() (or "
            "ray.init(address='auto') on a cluster) first, or use surge.ray.Processor, "
            "which connects for you."
        )
    remote = ray.remote(num_cpus=0, max_restarts=-1)(LedgerActor)
    return remote.options(
        name=ACTOR_NAME, namespace=NAMESPACE, get_if_exists=True, lifetime=None
    ).remote()


class RayStore:
    """A `LeaseStore` backed by the cluster's ledger actor."""

    def __init__(self, actor: Any = None) -> None:
        self._actor = actor if actor is not None else ledger_actor()

    async def exchange(self, key: str, request: Message) -> Message:
        import ray

        try:
            reply: Message = await self._actor.exchange.remote(key, request)
        except ray.exceptions.ActorDiedError:
            # The driver that owned it let go of it (a finished job, whose actor this
            # run's lookup by name found still dying): name a live one, or make it. The
            # client retries this exchange on it; the state starts afresh, and the
            # provider's headers correct it.
            self._actor = ledger_actor()
            raise
        return reply

    def __reduce__(self) -> tuple[Any, ...]:
        return (RayStore, (self._actor,))
