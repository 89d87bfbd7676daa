"""FeedSink on Redis: fullon_cache's OHLCVCache lists (merged in order by a Lua script) and Redis Streams.

One publish round is one MULTI/EXEC: the stream entries (``XADD ... MAXLEN ~ N``), the OHLCVCache list
updates and the newest-published points are written together or not at all.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from fullon_ohlcv_service.adapters.redis_cache import CONNECT_TIMEOUT_S, redis_errors
from fullon_ohlcv_service.feed_layout import (
    CANDLE_FIELDS,
    CANDLES,
    DEFAULT_MAXLEN,
    LIST_KEEP,
    TRADE_FIELDS,
    TRADES,
    FeedBatch,
    FeedEntry,
    bar_json,
    bar_ts_ms,
    candle_values,
    gap_fields,
    list_key,
    parse_entry,
    published_key,
    stream_key,
    trade_values,
)
from fullon_ohlcv_service.settings import StoreURL

OP_TIMEOUT_S = 5.0  # one round is at most a few thousand commands in one EXEC

# Merge final candles into an OHLCVCache list and keep it ordered by minute, each minute once.
# KEYS[1] the list; ARGV[1] how many elements to keep; ARGV[2..] (ts, bar JSON) pairs, ts ascending, unique.
# Bars newer than the last element are appended (the usual case: one RPUSH). Bars at or before it are
# merged into the tail: a bar replaces the element of its minute when it differs, a missing minute is
# inserted in order. The tail is read back only as far as the oldest such bar. Elements are JSON
# arrays whose first number is the time; the script reads only that number and never re-encodes a bar.
MERGE_LUA = r"""
local key = KEYS[1]
local keep = tonumber(ARGV[1])
local function ts_of(s)
  return tonumber(string.match(s, '^%[%s*(%-?%d+)')) or -1
end
local n = (#ARGV - 1) / 2
local last = redis.call('LINDEX', key, -1)
local last_ts = nil
if last then last_ts = ts_of(last) end
local k = 0
while k < n and last_ts ~= nil and tonumber(ARGV[2 + 2 * k]) <= last_ts do k = k + 1 end
local changed = 0
if k > 0 then
  local min_ts = tonumber(ARGV[2])
  local len = redis.call('LLEN', key)
  local depth, step, tail = 0, 64, {}
  while true do
    depth = math.min(len, depth + step)
    step = step * 2
    tail = redis.call('LRANGE', key, -depth, -1)
    if depth >= len or ts_of(tail[1]) < min_ts then break end
  end
  local merged = {}
  local i, j = 1, 0
  while i <= #tail or j < k do
    local tts = nil
    if i <= #tail then tts = ts_of(tail[i]) end
    local lts = nil
    if j < k then lts = tonumber(ARGV[2 + 2 * j]) end
    if lts == nil or (tts ~= nil and tts < lts) then
      merged[#merged + 1] = tail[i]
      i = i + 1
    elseif tts == nil or lts < tts then
      merged[#merged + 1] = ARGV[3 + 2 * j]
      changed = changed + 1
      j = j + 1
    else
      if tail[i] ~= ARGV[3 + 2 * j] then changed = changed + 1 end
      merged[#merged + 1] = ARGV[3 + 2 * j]
      i = i + 1
      j = j + 1
    end
  end
  if changed > 0 then
    if depth >= len then redis.call('DEL', key) else redis.call('LTRIM', key, 0, -(depth + 1)) end
    for s = 1, #merged, 1000 do
      redis.call('RPUSH', key, unpack(merged, s, math.min(s + 999, #merged)))
    end
  end
end
local fresh = {}
for p = k, n - 1 do fresh[#fresh + 1] = ARGV[3 + 2 * p] end
for s = 1, #fresh, 1000 do
  redis.call('RPUSH', key, unpack(fresh, s, math.min(s + 999, #fresh)))
end
if #fresh > 0 or changed > 0 then redis.call('LTRIM', key, -keep, -1) end
return {#fresh, changed}
"""


# XADD many entries with one command whose entries travel as ONE JSON argument: redis-py packs every
# argument in Python (tens of microseconds an entry as separate XADDs), json.dumps the list in C.
# KEYS[1] the stream; ARGV[1] MAXLEN (approximate); ARGV[2] the JSON array of field names; ARGV[3] a JSON
# array of entries, each an array of string values in that order (cjson decodes strings exactly).
# Entries get ids from the server (``*``), so consumers can resume by id or use consumer groups.
XADD_LUA = r"""
local names = cjson.decode(ARGV[2])
local rows = cjson.decode(ARGV[3])
local k = #names
local args = {'MAXLEN', '~', ARGV[1], '*'}
for i = 1, k do args[3 + 2 * i] = names[i] end
for _, row in ipairs(rows) do
  for i = 1, k do args[4 + 2 * i] = row[i] end
  redis.call('XADD', KEYS[1], unpack(args))
end
return #rows
"""


class RedisFeedSink:
    """ports.FeedSink for one exchange on Redis. Connects lazily; ``close()`` drops the pool."""

    def __init__(self, url: StoreURL, exchange: str, *, maxlen: int = DEFAULT_MAXLEN, qualified: bool = True,
                 list_keep: int = LIST_KEEP) -> None:
        self.url = url
        self.exchange = exchange
        self.maxlen = maxlen
        self.qualified = qualified
        self.list_keep = list_keep
        self._client: aredis.Redis | None = None
        self._merge: Any = None
        self._xadd: Any = None

    @property
    def client(self) -> aredis.Redis:
        if self._client is None:
            self._client = aredis.Redis.from_url(
                self.url.url, retry=AsyncRetry(NoBackoff(), 0), socket_connect_timeout=CONNECT_TIMEOUT_S,
                socket_timeout=OP_TIMEOUT_S)
            self._merge = self._client.register_script(MERGE_LUA)
            self._xadd = self._client.register_script(XADD_LUA)
        return self._client

    def list_key(self, symbol: str) -> str:
        return list_key(self.exchange, symbol, self.qualified)

    async def ping(self) -> None:
        with redis_errors(self.url):
            await self.client.ping()

    async def publish(self, batch: FeedBatch) -> None:
        client = self.client
        with redis_errors(self.url):
            async with client.pipeline(transaction=True) as pipe:
                for kind, g in batch.gaps:
                    marker = gap_fields(g.symbol, g.from_ts, g.to_ts, g.count, g.reason)
                    await self._entries(pipe, kind, tuple(marker), [tuple(marker.values())])
                if batch.trades:
                    await self._entries(pipe, TRADES, TRADE_FIELDS, [trade_values(s, t) for s, t in batch.trades])
                if batch.candles:
                    await self._entries(pipe, CANDLES, CANDLE_FIELDS, [candle_values(s, c) for s, c in batch.candles])
                for sym, bars in batch.bars.items():
                    if bars:
                        args: list[Any] = [self.list_keep]
                        for c in bars:
                            args += [c.ts // 1000, bar_json(c)]
                        await self._merge(keys=[self.list_key(sym)], args=args, client=pipe)
                if batch.published:
                    pipe.hset(published_key(self.exchange), mapping=batch.published)  # type: ignore[arg-type]
                await pipe.execute()

    async def _entries(self, pipe: Any, kind: str, names: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
        """Queue one XADD_LUA call adding ``rows`` (values in ``names`` order) to the ``kind`` stream."""
        args = [self.maxlen, json.dumps(names), json.dumps(rows, separators=(",", ":"))]
        await self._xadd(keys=[stream_key(self.exchange, kind)], args=args, client=pipe)

    async def published(self) -> dict[str, tuple[int, str]]:
        with redis_errors(self.url):
            raw = await self.client.hgetall(published_key(self.exchange))
        out: dict[str, tuple[int, str]] = {}
        for k, v in raw.items():
            ts, _, tid = _text(v).partition(" ")
            try:
                out[_text(k)] = (int(ts), tid)
            except ValueError:
                continue  # not ours: ignored (the restart check then has nothing to compare)
        return out

    async def recent(self, kind: str, count: int) -> list[FeedEntry]:
        with redis_errors(self.url):
            rows = await self.client.xrevrange(stream_key(self.exchange, kind), count=count)
        out: list[FeedEntry] = []
        for _, fields in rows or []:
            try:
                out.append(parse_entry(fields or {}))
            except ValueError:
                continue  # a foreign entry in our stream: not ours to interpret
        return out

    async def list_last_ts(self, symbol: str) -> int | None:
        with redis_errors(self.url):
            last = await self.client.lindex(self.list_key(symbol), -1)  # type: ignore[misc]
        if last is None:
            return None
        try:
            return bar_ts_ms(last)
        except (ValueError, TypeError, IndexError):
            return None  # a foreign element: the next sync appends after nothing it can read

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def _text(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
