//! The Lua scripts that keep presence rosters in Redis (see `presence`).
//!
//! Per group: a hash of members by `client`, a sorted set of `client`s in join order, and a
//! meta hash with the roster's `ver`sion, a join count (`seq`) and `max`, the members listed.
//! `max` is fixed when the roster starts (its first member) and read from there by every
//! script, so every node lists the same members whatever its own config says; a changed
//! `max_members` applies to rosters that start after it.
//!
//! Per tenant: `presence-nodes`, each node that has members scored by when it counts as dead,
//! and per node a set of its members' entries. A node found dead is taken out of the node set
//! and its set renamed to a drain (listed in `presence-drains`), all at once; drains are then
//! emptied in bounded batches. So a node that comes back in the middle finds itself gone and
//! joins its members again, and its drain, if still there, is dropped first: a batch can
//! never remove a member joined since.

use redis::Script;
use std::sync::LazyLock;

/// Shared by the scripts: Redis's time, and leaving with its announcement.
const COMMON: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function change(action, client, member)
  return '{"action":"' .. action .. '","client":' .. cjson.encode(client) .. ',"member":' .. member .. '}'
end
local function announce(chan, stream, group, ver, count, changes)
  local msg = '{"type":"streamhost_presence","stream":' .. cjson.encode(stream)
    .. ',"group":' .. cjson.encode(group) .. ',"version":' .. ver .. ',"count":' .. count
    .. ',"changes":[' .. table.concat(changes, ',') .. ']}'
  redis.call('PUBLISH', chan, msg)
  return msg
end
local function max_of(meta, default)
  return tonumber(redis.call('HGET', meta, 'max') or default)
end
local function leave(roster, order, meta, chan, stream, group, client, default_max, meta_ttl)
  local rank = redis.call('ZRANK', order, client)
  if not rank then return false end
  local max = max_of(meta, default_max)
  local member = redis.call('HGET', roster, client) or 'null'
  redis.call('ZREM', order, client)
  redis.call('HDEL', roster, client)
  local ver = redis.call('HINCRBY', meta, 'ver', 1)
  local count = redis.call('ZCARD', order)
  local changes = {}
  if rank < max then
    changes[1] = change('leave', client, member)
    if count >= max then
      local nxt = redis.call('ZRANGE', order, max - 1, max - 1)[1]
      changes[2] = change('join', nxt, redis.call('HGET', roster, nxt) or 'null')
    end
  end
  if count == 0 then redis.call('PEXPIRE', meta, meta_ttl) end
  announce(chan, stream, group, ver, count, changes)
  return ver
end
local function renew_node(nodes, drains, node, ttl, own_drain)
  local present = redis.call('ZSCORE', nodes, node)
  redis.call('ZADD', nodes, now_ms() + ttl, node)
  if not present then
    redis.call('DEL', own_drain)
    redis.call('SREM', drains, own_drain)
    return 0
  end
  return 1
end
"#;

/// KEYS: roster, order, meta, nodes, the node's set, drains. ARGV: channel, stream, group,
/// client, member JSON, max, entry, node, ttl ms, the node's drain. Returns {version after
/// the join, 1 if the node was in the node set, the change published or ''}.
pub static JOIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{COMMON}
local present = renew_node(KEYS[4], KEYS[6], ARGV[8], tonumber(ARGV[9]), ARGV[10])
redis.call('SADD', KEYS[5], ARGV[7])
if redis.call('HEXISTS', KEYS[1], ARGV[4]) == 1 then
  return {{tonumber(redis.call('HGET', KEYS[3], 'ver') or '0'), present, ''}}
end
if redis.call('ZCARD', KEYS[2]) == 0 then redis.call('HSET', KEYS[3], 'max', ARGV[6]) end
local max = max_of(KEYS[3], ARGV[6])
local seq = redis.call('HINCRBY', KEYS[3], 'seq', 1)
redis.call('PERSIST', KEYS[3])
redis.call('HSET', KEYS[1], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[2], seq, ARGV[4])
local ver = redis.call('HINCRBY', KEYS[3], 'ver', 1)
local count = redis.call('ZCARD', KEYS[2])
local changes = {{}}
if count <= max then changes[1] = change('join', ARGV[4], ARGV[5]) end
return {{ver, present, announce(ARGV[1], ARGV[2], ARGV[3], ver, count, changes)}}
"
    ))
});

/// KEYS: roster, order, meta, the node's set. ARGV: channel, stream, group, client, max (if
/// the roster has none), entry, meta ttl. Returns the version after the leave, 0 when it was
/// no member.
pub static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{COMMON}
redis.call('SREM', KEYS[4], ARGV[6])
return leave(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[7])) or 0
"
    ))
});

/// KEYS: roster, order, meta. ARGV: max (if the roster has none). Returns {version, count,
/// client, member, ...} for the listed members in join order, read together.
pub static ROSTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{COMMON}
local out = {{tonumber(redis.call('HGET', KEYS[3], 'ver') or '0'), redis.call('ZCARD', KEYS[2])}}
for _, c in ipairs(redis.call('ZRANGE', KEYS[2], 0, max_of(KEYS[3], ARGV[1]) - 1)) do
  out[#out + 1] = c
  out[#out + 1] = redis.call('HGET', KEYS[1], c) or 'null'
end
return out
"
    ))
});

/// KEYS: nodes, drains. ARGV: node, ttl ms, node set prefix, channel, batch, meta ttl, drain
/// prefix. Renews the node; turns dead nodes' sets into drains; removes up to `batch` members
/// from drains. Returns {1 if the node was in the node set, members removed}.
pub static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{COMMON}
local now = now_ms()
local present = renew_node(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]), ARGV[7] .. ARGV[1])
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 16)) do
  redis.call('ZREM', KEYS[1], node)
  local set = ARGV[3] .. node
  if redis.call('EXISTS', set) == 1 then
    local drain = ARGV[7] .. node
    redis.call('SUNIONSTORE', drain, drain, set)
    redis.call('DEL', set)
    redis.call('SADD', KEYS[2], drain)
  end
end
local removed = 0
local budget = tonumber(ARGV[5])
for _, drain in ipairs(redis.call('SRANDMEMBER', KEYS[2], 16)) do
  if budget > 0 then
    for _, entry in ipairs(redis.call('SPOP', drain, budget)) do
      budget = budget - 1
      local ok, e = pcall(cjson.decode, entry)
      if ok and type(e) == 'table' and #e == 6 then
        if leave(e[1], e[2], e[3], ARGV[4], e[4], e[5], e[6], 1000, tonumber(ARGV[6])) then
          removed = removed + 1
        end
      end
    end
  end
  if redis.call('EXISTS', drain) == 0 then redis.call('SREM', KEYS[2], drain) end
end
return {{present, removed}}
"
    ))
});
