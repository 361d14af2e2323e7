"""The shared budget on Ray: the ledger in one named actor per cluster.

An actor runs one method at a time, so `exchange` is atomic without locks. Workers reach
it by name (`ACTOR_NAME` in the `surge` namespace). It is detached: the cluster owns
it, not the job that happened to create it, so it outlives every job. An actor owned by
a job dies when that job lets go of it, and another job that found it by name while it
was dying (a second Processor in the same driver, or a pipeline started while one
ends) was left with a ledger that no longer answered. It holds no CPU, and a worker
that dies takes nothing with it but its leases, which expire.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from surge._shared._ledger import PROTOCOL, Message, State, exchange, new_state

# The protocol's version is in the name: a detached ledger outlives the surge that made
# it, and a job speaking another protocol must get its own.
ACTOR_NAME = f"surge-limiter-v{PROTOCOL}"
NAMESPACE = "surge"
# An exchange takes milliseconds; one not answered in this long is retried on the
# actor the name now points to, so no worker waits for ever on a reply that will not come.
REPLY_TIMEOUT = 10.0


class LedgerActor:
    """Holds the state of every shared key in this cluster."""

    def __init__(self) -> None:
        self._states: dict[str, State] = {}

    def exchange(self, key: str, request: Message) -> Message:
        return exchange(self._states.setdefault(key, new_state()), request, time.monotonic())

    def state(self, key: str) -> State:
        return self._states.get(key, new_state())


def ledger_actor() -> Any:
    """The cluster's ledger actor, created here (detached) if no job has yet."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError(
            "shared='ray' needs a connected Ray. HINT: call ray.init() (or "
            "ray.init(address='auto') on a cluster) first, or use surge.ray.Processor, "
            "which connects for you."
        )
    remote = ray.remote(num_cpus=0, max_restarts=-1)(LedgerActor)
    return remote.options(
        name=ACTOR_NAME, namespace=NAMESPACE, get_if_exists=True, lifetime="detached"
    ).remote()


class RayStore:
    """A `LeaseStore` backed by the cluster's ledger actor."""

    def __init__(self, actor: Any = None) -> None:
        self._actor = actor if actor is not None else ledger_actor()

    async def exchange(self, key: str, request: Message) -> Message:
        import ray

        try:
            reply: Message = await asyncio.wait_for(
                self._actor.exchange.remote(key, request), REPLY_TIMEOUT
            )
        except (ray.exceptions.ActorDiedError, ray.exceptions.ActorUnavailableError,
                asyncio.TimeoutError):  # fmt: skip
            # Someone killed it, or it does not answer: look the name up again (making a
            # new one if it is gone). The client retries this exchange there; a new
            # ledger's state starts afresh, and the provider's headers correct it.
            self._actor = ledger_actor()
            raise
        return reply

    def __reduce__(self) -> tuple[Any, ...]:
        return (RayStore, (self._actor,))
