"""The shared budget on Redis: the ledger's `exchange` as one atomic Lua script.

For fleets not on Ray: several `surge run` processes, or an app's processes, on one
provider key. Redis runs a script atomically, so the read-modify-write of the state (one
JSON value per key) needs no locks; time is Redis's own clock (`TIME`), so the
processes' clocks never meet. The state expires an hour after its last use.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from surge._shared._ledger import PROTOCOL, Message

_STATE_TTL_SECONDS = 3600

# A line-for-line transcription of surge._shared._ledger.exchange (keep them in step;
# tests/test_shared_limiter*.py run the same scenarios on both).
LEDGER_LUA = """
local raw = redis.call('GET', KEYS[1])
local state
if raw then state = cjson.decode(raw) else
  state = {dims = {}, pause = 0, leases = {}, seq = 0, queue = {}}
end
local req = cjson.decode(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local dims, leases, client = state.dims, state.leases, req.client

for name, conf in pairs(req.defaults or {}) do
  if dims[name] == nil then
    dims[name] = {rate = conf.rate, cap = conf.cap, level = conf.cap, t = now}
  end
end
local grown = {}
for name, conf in pairs(req.config or {}) do
  if dims[name] then
    grown[name] = conf.cap - dims[name].cap
    dims[name].rate = conf.rate
    dims[name].cap = conf.cap
  else
    dims[name] = {rate = conf.rate, cap = conf.cap, level = conf.cap, t = now}
  end
end

local held = req.held or {}
local released = {}
for _, id in ipairs(req.release or {}) do released[id] = true end
local ids = {}
for id, _ in pairs(leases) do ids[#ids + 1] = id end
for _, id in ipairs(ids) do
  local lease = leases[id]
  if lease.exp <= now then
    leases[id] = nil
  elseif lease.c == client then
    if released[id] then
      for name, amount in pairs(held[id] or lease.amt) do
        if dims[name] and amount > 0 then dims[name].level = dims[name].level + amount end
      end
      leases[id] = nil
    elseif held[id] then
      lease.amt = held[id]
    else
      leases[id] = nil
    end
  end
end

local outstanding = {}
for name, _ in pairs(dims) do outstanding[name] = 0 end
local clients, nclients = {[client] = true}, 1
for _, lease in pairs(leases) do
  if not clients[lease.c] then clients[lease.c] = true; nclients = nclients + 1 end
  for name, amount in pairs(lease.amt) do
    if outstanding[name] and amount > 0 then outstanding[name] = outstanding[name] + amount end
  end
end

for name, dim in pairs(dims) do
  local ceiling = dim.cap - outstanding[name]
  local refilled = dim.level + math.max(0, now - dim.t) * dim.rate
  dim.level = math.min(refilled, ceiling)
  dim.t = now
end

for name, remaining in pairs(req.correct or {}) do
  if dims[name] then
    dims[name].level = math.min(dims[name].level, remaining - outstanding[name])
  end
end
for name, remaining in pairs(req.learn or {}) do
  local dim = dims[name]
  if dim and (grown[name] or 0) > 0 then
    local room = math.min(remaining - outstanding[name], dim.level + grown[name])
    dim.level = math.max(dim.level, room)
  end
end

local pause = req.pause or 0
if pause > 0 then state.pause = math.max(state.pause, now + pause) end

local config = {}
for name, dim in pairs(dims) do config[name] = {rate = dim.rate, cap = dim.cap} end
local reply = {lease = '', granted = {}, wait = 0, paused_for = math.max(0, state.pause - now),
               config = config, clients = nclients}

local function save()
  if next(leases) == nil then state.leases = {} end
  redis.call('SET', KEYS[1], cjson.encode(state), 'EX', tonumber(ARGV[2]))
  return cjson.encode(reply)
end

if reply.paused_for > 0 then
  reply.wait = reply.paused_for
  return save()
end

local need = req.need or {}
local queue = {}
for _, q in ipairs(state.queue or {}) do
  if q.exp > now then queue[#queue + 1] = q end
end
local position = #queue + 1
for i, q in ipairs(queue) do
  if q.c == client then position = i; break end
end
local ahead, others = {}, {}
for i, q in ipairs(queue) do
  if i ~= position then
    for name, amount in pairs(q.need) do
      others[name] = (others[name] or 0) + amount
      if i < position then ahead[name] = (ahead[name] or 0) + amount end
    end
  end
end
local wait = 0
for name, amount in pairs(need) do
  local dim = dims[name]
  if dim then
    local short = (ahead[name] or 0) + math.min(amount, dim.cap) - dim.level
    if short > 1e-6 then wait = math.max(wait, short / dim.rate) end
  end
end
if wait > 0 then
  queue[position] = {c = client, need = need, exp = now + wait + 0.5}
  state.queue = queue
  reply.wait = wait
  return save()
end
local rest = {}
for i, q in ipairs(queue) do
  if i ~= position then rest[#rest + 1] = q end
end
state.queue = rest

local granted, any = {}, false
for name, amount in pairs(req.want or {}) do
  local dim = dims[name]
  if dim then
    local share = dim.cap / (2 * nclients)
    local free = dim.level - (others[name] or 0)
    local take = math.max(need[name] or 0, math.min(amount, free, share))
    if take > 0 then
      dim.level = dim.level - take
      granted[name] = take
      any = true
    end
  end
end
if any then
  state.seq = state.seq + 1
  local id = tostring(state.seq)
  local amt = {}
  for name, amount in pairs(granted) do amt[name] = amount end
  leases[id] = {c = client, exp = now + req.ttl, amt = amt}
  reply.lease = id
  reply.granted = granted
end
return save()
"""


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


class RedisStore:
    """A `LeaseStore` on Redis. Checks the server answers when made, so a wrong URL fails
    at once instead of leaving every call waiting for a lease."""

    def __init__(self, url: str, *, connect_timeout: float = 2.0) -> None:
        try:
            import redis
        except ImportError as error:
            raise ImportError(
                "a redis:// shared limit needs the redis client. HINT: "
                "pip install 'surge[redis]' (or pip install redis)."
            ) from error
        self.url = url
        self._timeout = connect_timeout
        probe = redis.Redis.from_url(
            url, socket_connect_timeout=connect_timeout, socket_timeout=connect_timeout
        )
        try:
            probe.ping()
        except (redis.RedisError, OSError) as error:
            raise ConnectionError(
                f"the shared limit store at {redact(url)} did not answer: "
                f"{type(error).__name__}: {error}. HINT: start Redis there (redis-server "
                "--port 6379) or give the URL of one that runs, e.g. "
                "redis://localhost:6379/0."
            ) from None
        finally:
            probe.close()
        self._client: Any = None
        self._script: Any = None

    def _connect(self) -> Any:
        if self._client is None:
            import redis.asyncio

            self._client = redis.asyncio.Redis.from_url(
                self.url, socket_connect_timeout=self._timeout, socket_timeout=self._timeout
            )
            self._script = self._client.register_script(LEDGER_LUA)
        return self._script

    async def exchange(self, key: str, request: Message) -> Message:
        script = self._connect()
        raw = await script(
            keys=[f"surge:limit:v{PROTOCOL}:{key}"], args=[json.dumps(request), _STATE_TTL_SECONDS]
        )
        reply: Message = json.loads(raw)
        if isinstance(reply.get("granted"), list):  # cjson writes an empty table as []
            reply["granted"] = {}
        if isinstance(reply.get("config"), list):
            reply["config"] = {}
        return reply

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def __repr__(self) -> str:
        return f"RedisStore({redact(self.url)!r})"
