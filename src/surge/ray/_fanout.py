"""`surge run --ray`: the job's calls sent from Ray workers, its journal where it was.

The job itself (engine, limiter, journal, output, progress) stays in the `surge run`
process, so resume, `surge status` and `surge report` work as for any job and there is
one progress line. Only the calls travel: `RayProvider` is a provider whose `send`
hands the request to one of N async actors, each with its own HTTP connection pool,
round robin. The limiter admits a call before it is handed over, so the workers need
no limiter of their own; `--shared-limit` still shares it with other jobs.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

from surge._feedback import Reply
from surge.providers import ProviderResponse, make_provider
from surge.ray._processor import _Secret, connect


class _HttpWorker:
    """One actor: a provider with its own connection pool; errors come back as values."""

    def __init__(self, kind: str, base_url: str | None, secret: Any, max_connections: int) -> None:
        import ray

        api_key = ray.get(secret[0]).reveal() if secret else None
        self._provider = make_provider(
            kind, base_url=base_url, api_key=api_key, max_connections=max_connections
        )

    async def send(self, url: str, body: dict[str, Any]) -> tuple[bool, Any]:
        try:
            reply = await self._provider.send(url, body)
        except Exception as error:  # surge's own errors pickle with their hints
            return False, error
        return True, (reply.value, reply.usage, dict(reply.headers or {}))

    async def aclose(self) -> None:
        await self._provider.aclose()


class RayProvider:
    """A provider whose requests go out from `workers` Ray actors."""

    def __init__(
        self,
        kind: str,
        *,
        base_url: str | None,
        api_key: str | None,
        max_connections: int,
        workers: int,
        address: str | None = None,
        num_cpus: float = 0.5,
    ) -> None:
        import ray

        if workers < 1:
            raise ValueError(f"--ray-workers must be at least 1, got {workers}")
        if kind == "local":
            raise ValueError(
                "--ray sends HTTP requests from Ray workers; --provider local has none. "
                "HINT: drop --ray for a local model."
            )
        make_provider(kind, base_url=base_url, api_key=None)  # bad input fails here, not in Ray
        self.name = kind
        if not ray.is_initialized():
            connect(address)
        secret = [ray.put(_Secret(api_key))] if api_key else None
        per_worker = max(1, -(-max_connections // workers))
        remote: Any = ray.remote(num_cpus=num_cpus)(_HttpWorker)
        self._workers: list[Any] = [
            remote.remote(kind, base_url, secret, per_worker) for _ in range(workers)
        ]
        self._next = itertools.cycle(self._workers)

    async def send(self, url: str, body: dict[str, Any]) -> Reply[ProviderResponse]:
        ok, payload = await next(self._next).send.remote(url, body)
        if not ok:
            raise payload
        value, usage, headers = payload
        return Reply(value, usage=usage, headers=headers)

    async def aclose(self) -> None:
        import ray

        for worker in self._workers:
            with contextlib.suppress(Exception):  # a dead worker has nothing to close
                await worker.aclose.remote()
            ray.kill(worker)
