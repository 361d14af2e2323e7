"""The shared budget's state and its one operation, `exchange`: pure data in, data out.

Every backend runs this same step atomically: the Ray actor calls it on its own state
(an actor runs one method at a time), Redis runs a Lua transcription of it
(`_redis.LEDGER_LUA`, tested against the same scenarios). State and messages are plain
JSON-shaped dicts so the two stay line-for-line alike. A change to their shapes below is
a new protocol: bump `PROTOCOL`, which both stores put in their names, since a ledger
outlives the surge that made it (Ray's is detached; Redis keeps state an hour).

The model. Per dimension ("requests", "tokens", ...) a token bucket of `rate` per second
and capacity `cap` (the burst), as the single-process limiter keeps
(https://en.wikipedia.org/wiki/Generic_cell_rate_algorithm). Workers do not take
tokens one call at a time: they lease a slice (a few tenths of a second of rate) and
spend it locally, so the store is off the per-request path. A lease expires after
`ttl` seconds, so a worker that dies holds nothing for longer than that.

The invariant that makes N workers as safe as one: the store's `level` plus what is
leased and not yet spent (`outstanding`, as the workers last reported it, never less
than the truth) stays within `cap`. Refill stops at `cap - outstanding`. So what all
workers together can send in any window of w seconds is at most cap + rate * w, the
same bound one process has.

    state   = {"dims": {dim: {"rate", "cap", "level", "t"}}, "pause": until,
               "leases": {id: {"c": client, "exp": until, "amt": {dim: amount}}}, "seq": n,
               "queue": [{"c": client, "need": {dim: amount}, "exp": until}]}
    request = {"client", "ttl", "defaults": {dim: {"rate", "cap"}} (set if absent),
               "config": {dim: {"rate", "cap"}} (learned from headers: overwrite),
               "held": {id: {dim: unspent}} (every lease the client still holds),
               "release": [id] (give these back), "need": {dim: amount} (wait for it),
               "want": {dim: amount} (take up to this), "correct": {dim: remaining},
               "learn": {dim: remaining} (the server's burst, seen first), "pause": seconds}
    reply   = {"lease": id or "", "granted": {dim: amount}, "wait": seconds,
               "paused_for": seconds, "config": {dim: {"rate", "cap"}}, "clients": n}
"""

from __future__ import annotations

from typing import Any

State = dict[str, Any]
Message = dict[str, Any]

PROTOCOL = 1

# A queued client that has not come back this long after its turn loses its place.
_QUEUE_GRACE = 0.5
# Float sums drift: a shortfall this small is no shortfall (else waits shrink forever).
_EPSILON = 1e-6


def new_state() -> State:
    return {"dims": {}, "pause": 0.0, "leases": {}, "seq": 0, "queue": []}


def exchange(state: State, request: Message, now: float) -> Message:
    """Apply one client's request to `state` (in place) at time `now`; return the reply."""
    dims: dict[str, dict[str, float]] = state["dims"]
    leases: dict[str, dict[str, Any]] = state["leases"]
    client = request["client"]

    for name, conf in request.get("defaults", {}).items():
        if name not in dims:
            dims[name] = {"rate": conf["rate"], "cap": conf["cap"], "level": conf["cap"], "t": now}
    grown: dict[str, float] = {}  # how much a dimension's burst grew in this request
    for name, conf in request.get("config", {}).items():
        if name in dims:
            grown[name] = conf["cap"] - dims[name]["cap"]
            dims[name]["rate"] = conf["rate"]
            dims[name]["cap"] = conf["cap"]
        else:
            dims[name] = {"rate": conf["rate"], "cap": conf["cap"], "level": conf["cap"], "t": now}

    # What the client still holds: report it, hand back what it releases, and forget
    # its leases it no longer lists (spent, or expired on its own clock).
    held: dict[str, dict[str, float]] = request.get("held", {})
    released = set(request.get("release", []))
    for lease_id in list(leases):
        lease = leases[lease_id]
        if lease["exp"] <= now:
            del leases[lease_id]
        elif lease["c"] == client:
            if lease_id in released:
                for name, amount in held.get(lease_id, lease["amt"]).items():
                    if name in dims and amount > 0:
                        dims[name]["level"] += amount
                del leases[lease_id]
            elif lease_id in held:
                lease["amt"] = dict(held[lease_id])
            else:
                del leases[lease_id]

    outstanding: dict[str, float] = {name: 0.0 for name in dims}
    clients = {client}
    for lease in leases.values():
        clients.add(lease["c"])
        for name, amount in lease["amt"].items():
            if name in outstanding and amount > 0:
                outstanding[name] += amount

    for name, dim in dims.items():
        ceiling = dim["cap"] - outstanding[name]
        refilled = dim["level"] + max(0.0, now - dim["t"]) * dim["rate"]
        dim["level"] = min(refilled, ceiling)
        dim["t"] = now

    # The provider's own count, seen by this client: nobody may have more than it says
    # is left (headers lag, so this only ever lowers the level).
    for name, remaining in request.get("correct", {}).items():
        if name in dims:
            dims[name]["level"] = min(dims[name]["level"], remaining - outstanding[name])
    # ...except when the provider first reveals a burst larger than the one assumed:
    # the room it has left, up to what the burst grew by (headers lag; others may have
    # spent some since).
    for name, remaining in request.get("learn", {}).items():
        if name in dims and grown.get(name, 0.0) > 0:
            dim = dims[name]
            room = min(remaining - outstanding[name], dim["level"] + grown[name])
            dim["level"] = max(dim["level"], room)

    pause = request.get("pause", 0.0)
    if pause > 0:
        state["pause"] = max(state["pause"], now + pause)

    reply: Message = {
        "lease": "",
        "granted": {},
        "wait": 0.0,
        "paused_for": max(0.0, state["pause"] - now),
        "config": {name: {"rate": d["rate"], "cap": d["cap"]} for name, d in dims.items()},
        "clients": len(clients),
    }
    if reply["paused_for"] > 0:
        reply["wait"] = reply["paused_for"]
        return reply

    # Clients that cannot be served queue, first come first served: each is told when
    # its turn comes (what those ahead need, then its own, at the refill rate) and asks
    # once more then. An entry lapses if its client does not come back in time.
    need: dict[str, float] = request.get("need", {})
    queue = [q for q in state.get("queue", []) if q["exp"] > now]
    position = next((i for i, q in enumerate(queue) if q["c"] == client), len(queue))
    ahead: dict[str, float] = {}
    others: dict[str, float] = {}
    for i, entry in enumerate(queue):
        if i == position:
            continue
        for name, amount in entry["need"].items():
            others[name] = others.get(name, 0.0) + amount
            if i < position:
                ahead[name] = ahead.get(name, 0.0) + amount
    wait = 0.0
    for name, amount in need.items():
        if name in dims:
            dim = dims[name]
            short = ahead.get(name, 0.0) + min(amount, dim["cap"]) - dim["level"]
            if short > _EPSILON:
                wait = max(wait, short / dim["rate"])
    if wait > 0:
        entry = {"c": client, "need": dict(need), "exp": now + wait + _QUEUE_GRACE}
        if position < len(queue):
            queue[position] = entry
        else:
            queue.append(entry)
        state["queue"] = queue
        reply["wait"] = wait
        return reply
    state["queue"] = [q for i, q in enumerate(queue) if i != position]

    # A fair slice: with k clients, nobody takes more than half the burst over k at once,
    # nor what the queue is waiting for.
    granted: dict[str, float] = {}
    for name, amount in request.get("want", {}).items():
        if name in dims:
            dim = dims[name]
            share = dim["cap"] / (2 * len(clients))
            free = dim["level"] - others.get(name, 0.0)
            take = max(need.get(name, 0.0), min(amount, free, share))
            if take > 0:
                dim["level"] -= take
                granted[name] = take
    if granted:
        state["seq"] += 1
        lease_id = str(state["seq"])
        leases[lease_id] = {"c": client, "exp": now + request["ttl"], "amt": dict(granted)}
        reply["lease"] = lease_id
        reply["granted"] = granted
    return reply
