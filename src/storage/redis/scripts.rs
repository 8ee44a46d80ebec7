//! The Lua scripts that make set, delete and update atomic inside Redis.
//!
//! Items live where iii keeps them (spec section 9): hash `stream:{stream}:{group}`, field =
//! item id, value = JSON text. Redis hashes have no order, so each group also has a sorted set
//! `streamhost:order:{stream}:{group}` that scores items by when they were first written. It is
//! kept outside the `stream:` prefix so an iii node scanning `stream:*` never mistakes it for a
//! group. Items an iii node writes are not in it; `list` puts them last. That is the default
//! tenant's layout; other tenants have the same two keys under their own prefix (see `keys`).
//!
//! Every script takes KEYS[1] = the hash and KEYS[2] = the order set. `redis::Script` sends
//! them with EVALSHA, and loads them again after a restart of the server (NOSCRIPT).

use redis::Script;
use std::sync::LazyLock;

/// Gives an item a place at the end of its group's order, unless it already has one.
const APPEND_TO_ORDER: &str = r"
local function append_to_order(order_key, item)
  if redis.call('ZSCORE', order_key, item) == false then
    local last = redis.call('ZRANGE', order_key, -1, -1, 'WITHSCORES')
    local score = 1
    if last[2] then score = tonumber(last[2]) + 1 end
    redis.call('ZADD', order_key, score, item)
  end
end
";

/// ARGV: item, JSON. Returns the old JSON or nil.
pub static SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{APPEND_TO_ORDER}
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
append_to_order(KEYS[2], ARGV[1])
return old
"
    ))
});

/// ARGV: item, 1 if it is expected to exist, its expected JSON, the new JSON.
/// Writes only when the item is still what the caller read: returns {1} then, or
/// {0, exists, current JSON} so the caller can apply its ops again to the current value.
pub static COMPARE_AND_SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{APPEND_TO_ORDER}
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local same
if ARGV[2] == '1' then same = (cur == ARGV[3]) else same = (cur == false) end
if not same then
  if cur == false then return {{0, 0, ''}} end
  return {{0, 1, cur}}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
append_to_order(KEYS[2], ARGV[1])
return {{1, 0, ''}}
"
    ))
});

/// ARGV: item. Returns the removed JSON or nil; drops the order set with the group's last item.
pub static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old == false then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('DEL', KEYS[2]) end
return old
",
    )
});

/// Returns {order set members in order, the hash as field, value, field, value...}, read together.
pub static LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
return {redis.call('ZRANGE', KEYS[2], 0, -1), redis.call('HGETALL', KEYS[1])}
",
    )
});
