"""ProcessCache on Redis in fullon_cache's exact key layout (async and sync clients share the Lua/JSON code)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from fullon_ohlcv_service.adapters.cache_layout import (
    COMPONENTS_KEY,
    DATA_TTL_S,
    active_key,
    active_types,
    check_status,
    data_key,
    decode_doc,
    is_fresh,
    ms_iso,
    new_document,
    new_process_id,
    now_iso,
    sort_docs,
    split_process_id,
    trade_status_key,
)
from fullon_ohlcv_service.errors import ConfigError, PermanentError, StoreUnavailable
from fullon_ohlcv_service.redaction import redact_text, redact_value
from fullon_ohlcv_service.settings import StoreURL

CONNECT_TIMEOUT_S = 1.0
OP_TIMEOUT_S = 2.0


# ---------------------------------------------------------------- Lua (server-side read-merge-write)
#
# Redis 7.0's cjson is lossy (an empty array comes back as ``{}``, numbers are cut to 14
# digits), so the scripts never decode a value: they split the stored JSON object into
# (key, raw value text) pairs, replace the raw values that change (JSON-encoded by Python)
# and join it again. Untouched fields, and params written by other tools, survive byte-exact.

_LUA_JSON = r"""
local function skip_ws(s, i) return string.find(s, '[^ \t\r\n]', i) end
local function split_object(s)
  if s == nil or s == false then return nil end
  local i = skip_ws(s, 1)
  if not i or string.byte(s, i) ~= 123 then return nil end
  local keys, vals = {}, {}
  i = skip_ws(s, i + 1)
  if not i then return nil end
  if string.byte(s, i) == 125 then return keys, vals end
  while true do
    if string.byte(s, i) ~= 34 then return nil end
    local j = i + 1
    while true do
      local b = string.byte(s, j)
      if b == nil then return nil end
      if b == 92 then j = j + 2 elseif b == 34 then break else j = j + 1 end
    end
    local key = cjson.decode(string.sub(s, i, j))
    i = skip_ws(s, j + 1)
    if not i or string.byte(s, i) ~= 58 then return nil end
    local v = skip_ws(s, i + 1)
    if not v then return nil end
    local k, depth, instr = v, 0, false
    while true do
      local b = string.byte(s, k)
      if b == nil then return nil end
      if instr then
        if b == 92 then k = k + 1 elseif b == 34 then instr = false end
      elseif b == 34 then instr = true
      elseif b == 123 or b == 91 then depth = depth + 1
      elseif b == 125 or b == 93 then
        if depth == 0 then break end
        depth = depth - 1
      elseif b == 44 and depth == 0 then break
      end
      k = k + 1
    end
    local raw = string.match(string.sub(s, v, k - 1), '^(.-)[ \t\r\n]*$')
    if vals[key] == nil then keys[#keys + 1] = key end
    vals[key] = raw
    if string.byte(s, k) == 125 then return keys, vals end
    i = skip_ws(s, k + 1)
    if not i then return nil end
  end
end
local function put(keys, vals, k, raw)
  if vals[k] == nil then keys[#keys + 1] = k end
  vals[k] = raw
end
local function join(keys, vals)
  local parts = {}
  for n, k in ipairs(keys) do parts[n] = cjson.encode(k) .. ':' .. vals[k] end
  return '{' .. table.concat(parts, ',') .. '}'
end
"""

# KEYS: data, active:{type}, components
# ARGV: 1 id, 2 now (plain), 3 now (JSON), 4 ttl, 5 heartbeat 0/1, 6 status JSON or '',
#       7 message JSON or '', 8 new-doc JSON (used only when the key is gone), 9 component,
#       10.. params as key, raw JSON value pairs
# Returns 1 when the document had to be recreated, else 0.
UPDATE_LUA = _LUA_JSON + r"""
local keys, vals = split_object(redis.call('GET', KEYS[1]))
local recreated = 0
if keys == nil then
  keys, vals = split_object(ARGV[8])
  recreated = 1
end
if ARGV[6] ~= '' then put(keys, vals, 'status', ARGV[6]) end
if ARGV[7] ~= '' then put(keys, vals, 'message', ARGV[7]) end
if #ARGV > 9 then
  local pk, pv = split_object(vals['params'])
  if pk == nil then pk, pv = {}, {} end
  for n = 10, #ARGV, 2 do put(pk, pv, ARGV[n], ARGV[n + 1]) end
  put(keys, vals, 'params', join(pk, pv))
end
put(keys, vals, 'updated_at', ARGV[3])
if ARGV[5] == '1' then put(keys, vals, 'heartbeat', ARGV[3]) end
redis.call('SET', KEYS[1], join(keys, vals), 'EX', ARGV[4])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if recreated == 1 then
  local cur = redis.call('HGET', KEYS[3], ARGV[9])
  if not cur or redis.call('EXISTS', 'process:data:' .. cur) == 0 then redis.call('HSET', KEYS[3], ARGV[9], ARGV[1]) end
end
return recreated
"""

# KEYS: data, active:{type}, components
# ARGV: 1 id, 2 now (JSON), 3 ttl, 4 message JSON, 5 component
STOP_LUA = _LUA_JSON + r"""
local keys, vals = split_object(redis.call('GET', KEYS[1]))
local found = 0
if keys ~= nil then
  put(keys, vals, 'status', '"stopped"')
  put(keys, vals, 'message', ARGV[4])
  put(keys, vals, 'updated_at', ARGV[2])
  redis.call('SET', KEYS[1], join(keys, vals), 'EX', ARGV[3])
  found = 1
end
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('HGET', KEYS[3], ARGV[5]) == ARGV[1] then redis.call('HDEL', KEYS[3], ARGV[5]) end
return found
"""


def register_plan(
    process_type: str, component: str, params: Mapping[str, Any] | None, status: str, message: str,
) -> tuple[str, str, str]:
    """(id, JSON document, now) for a registration; validates the enum strings."""
    check_status(status)
    process_id = new_process_id(process_type, component)
    now = now_iso()
    doc = new_document(process_id, process_type, component, params, status, message, now)
    return process_id, json.dumps(doc), now


def update_plan(
    process_id: str, status: str | None, message: str | None, params: Mapping[str, Any] | None, heartbeat: bool,
) -> tuple[list[str], list[str]]:
    """KEYS and ARGV of ``UPDATE_LUA``."""
    ptype, component = split_process_id(process_id)
    if status is not None:
        check_status(status)
    now = now_iso()
    fallback = new_document(process_id, ptype, component, None, "running", "", now)
    args = [
        process_id, now, json.dumps(now), str(DATA_TTL_S), "1" if heartbeat else "0",
        "" if status is None else json.dumps(status), "" if message is None else json.dumps(redact_text(message)),
        json.dumps(fallback), component,
    ]
    for key, value in (params or {}).items():
        args += [str(key), json.dumps(redact_value(value))]
    return [data_key(process_id), active_key(ptype), COMPONENTS_KEY], args


def stop_plan(process_id: str, message: str) -> tuple[list[str], list[str]]:
    ptype, component = split_process_id(process_id)
    args = [process_id, json.dumps(now_iso()), str(DATA_TTL_S), json.dumps(redact_text(message)), component]
    return [data_key(process_id), active_key(ptype), COMPONENTS_KEY], args


def fresh_ids(hashes: Sequence[Mapping[bytes, bytes]], within_s: float) -> list[str]:
    now = time.time_ns() // 1_000_000
    return [k.decode() for h in hashes for k, v in h.items() if is_fresh(v, now, within_s)]


# ---------------------------------------------------------------- error classification

def _scrub(text: str, url: StoreURL) -> str:
    return redact_text(text, url.url)


@contextmanager
def redis_errors(url: StoreURL) -> Iterator[None]:
    """Translate redis-py errors into ours; messages name the endpoint, never the password."""
    try:
        yield
    except redis.AuthenticationError as exc:
        raise ConfigError(f"Redis {url.redacted}: authentication failed ({_scrub(str(exc), url)})") from None
    except (redis.ConnectionError, redis.TimeoutError, ConnectionError, TimeoutError) as exc:
        raise StoreUnavailable(
            f"Redis {url.redacted} unavailable: {type(exc).__name__}: {_scrub(str(exc), url)}"
        ) from None
    except redis.RedisError as exc:
        raise PermanentError(f"Redis {url.redacted}: {type(exc).__name__}: {_scrub(str(exc), url)}") from None


def _client_kwargs() -> dict[str, Any]:
    return {"socket_connect_timeout": CONNECT_TIMEOUT_S, "socket_timeout": OP_TIMEOUT_S}


# ---------------------------------------------------------------- async client

class RedisProcessCache:
    """ports.ProcessCache on Redis; ``async with`` connects (and pings), exit closes."""

    def __init__(self, url: StoreURL) -> None:
        self.url = url
        self._client: aredis.Redis | None = None
        self._update: Any = None
        self._stop: Any = None

    async def __aenter__(self) -> RedisProcessCache:
        client = aredis.Redis.from_url(self.url.url, retry=AsyncRetry(NoBackoff(), 1), **_client_kwargs())
        try:
            with redis_errors(self.url):
                await client.ping()
        except BaseException:
            await client.aclose()
            raise
        self._client = client
        self._update = client.register_script(UPDATE_LUA)
        self._stop = client.register_script(STOP_LUA)
        return self

    async def __aexit__(self, *exc: object) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    @property
    def client(self) -> aredis.Redis:
        if self._client is None:
            raise RuntimeError("RedisProcessCache used outside 'async with'")
        return self._client

    async def register(
        self, process_type: str, component: str, params: Mapping[str, Any] | None = None,
        status: str = "starting", message: str = "",
    ) -> str:
        process_id, doc, now = register_plan(process_type, component, params, status, message)
        with redis_errors(self.url):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.set(data_key(process_id), doc, ex=DATA_TTL_S)
                pipe.hset(active_key(process_type), process_id, now)
                pipe.hset(COMPONENTS_KEY, component, process_id)
                await pipe.execute()
        return process_id

    async def update(
        self, process_id: str, status: str | None = None, message: str | None = None,
        params: Mapping[str, Any] | None = None, heartbeat: bool = True,
    ) -> None:
        """One EVALSHA. A vanished document (TTL, flush) is recreated from the given fields
        (status ``running`` unless given) so a live worker reappears instead of updating nothing."""
        keys, args = update_plan(process_id, status, message, params, heartbeat)
        with redis_errors(self.url):
            await self._update(keys=keys, args=args)

    async def get(self, process_id: str) -> dict[str, Any] | None:
        with redis_errors(self.url):
            return decode_doc(await self.client.get(data_key(process_id)))

    async def get_component(self, component: str) -> dict[str, Any] | None:
        with redis_errors(self.url):
            pid: bytes | None = await self.client.hget(COMPONENTS_KEY, component)  # type: ignore[assignment]
            if pid is None:
                return None
            return decode_doc(await self.client.get(data_key(pid.decode())))

    async def list_active(self, process_type: str | None = None, within_s: float = 300.0) -> list[dict[str, Any]]:
        types = active_types(process_type)
        with redis_errors(self.url):
            async with self.client.pipeline(transaction=False) as pipe:
                for t in types:
                    pipe.hgetall(active_key(t))
                hashes = await pipe.execute()
            ids = fresh_ids(hashes, within_s)
            if not ids:
                return []
            raws = await self.client.mget([data_key(i) for i in ids])
        return sort_docs([d for d in map(decode_doc, raws) if d is not None])

    async def stop(self, process_id: str, message: str = "") -> None:
        keys, args = stop_plan(process_id, message)
        with redis_errors(self.url):
            await self._stop(keys=keys, args=args)

    async def set_trade_status(self, exchange: str, ts_ms: int) -> None:
        with redis_errors(self.url):
            await self.client.set(trade_status_key(exchange), ms_iso(ts_ms))


# ---------------------------------------------------------------- sync client

class SyncRedisProcessCache:
    """ports.SyncProcessCache on Redis: connects lazily, ``close()`` drops the pool, fork-safe."""

    def __init__(self, url: StoreURL) -> None:
        self.url = url
        self._client: redis.Redis | None = None
        self._pid = 0
        self._update: Any = None
        self._stop: Any = None

    @property
    def client(self) -> redis.Redis:
        if self._client is None or self._pid != os.getpid():
            # After a fork the parent's pool is abandoned, never closed: its sockets belong to the parent.
            self._client = redis.Redis.from_url(self.url.url, retry=Retry(NoBackoff(), 1), **_client_kwargs())
            self._pid = os.getpid()
            self._update = self._client.register_script(UPDATE_LUA)
            self._stop = self._client.register_script(STOP_LUA)
        return self._client

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._pid == os.getpid():
            client.close()

    def __enter__(self) -> SyncRedisProcessCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def register(
        self, process_type: str, component: str, params: Mapping[str, Any] | None = None,
        status: str = "starting", message: str = "",
    ) -> str:
        process_id, doc, now = register_plan(process_type, component, params, status, message)
        with redis_errors(self.url):
            pipe = self.client.pipeline(transaction=True)
            pipe.set(data_key(process_id), doc, ex=DATA_TTL_S)
            pipe.hset(active_key(process_type), process_id, now)
            pipe.hset(COMPONENTS_KEY, component, process_id)
            pipe.execute()
        return process_id

    def update(
        self, process_id: str, status: str | None = None, message: str | None = None,
        params: Mapping[str, Any] | None = None, heartbeat: bool = True,
    ) -> None:
        """Same semantics as RedisProcessCache.update (one EVALSHA, recreates a vanished document)."""
        keys, args = update_plan(process_id, status, message, params, heartbeat)
        with redis_errors(self.url):
            self.client  # noqa: B018 -- make sure the scripts belong to this process's client
            self._update(keys=keys, args=args)

    def get(self, process_id: str) -> dict[str, Any] | None:
        with redis_errors(self.url):
            return decode_doc(self.client.get(data_key(process_id)))  # type: ignore[arg-type]

    def get_component(self, component: str) -> dict[str, Any] | None:
        with redis_errors(self.url):
            pid: bytes | None = self.client.hget(COMPONENTS_KEY, component)  # type: ignore[assignment]
            if pid is None:
                return None
            return decode_doc(self.client.get(data_key(pid.decode())))  # type: ignore[arg-type]

    def list_active(self, process_type: str | None = None, within_s: float = 300.0) -> list[dict[str, Any]]:
        types = active_types(process_type)
        with redis_errors(self.url):
            pipe = self.client.pipeline(transaction=False)
            for t in types:
                pipe.hgetall(active_key(t))
            ids = fresh_ids(pipe.execute(), within_s)
            if not ids:
                return []
            raws: list[bytes | None] = self.client.mget([data_key(i) for i in ids])  # type: ignore[assignment]
        return sort_docs([d for d in map(decode_doc, raws) if d is not None])

    def stop(self, process_id: str, message: str = "") -> None:
        keys, args = stop_plan(process_id, message)
        with redis_errors(self.url):
            self.client  # noqa: B018
            self._stop(keys=keys, args=args)

    def set_trade_status(self, exchange: str, ts_ms: int) -> None:
        with redis_errors(self.url):
            self.client.set(trade_status_key(exchange), ms_iso(ts_ms))
