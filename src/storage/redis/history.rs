//! Offsets and history kept in Redis, so that a client can resume on any node.
//!
//! Each group event is numbered inside Redis by one script (`NUMBER`) that, atomically: adds
//! one to the group's offset, makes the group's epoch if it has none, appends the frame (with
//! its offset and epoch) to the group's history stream, trims that to `history.size`, and
//! publishes the numbered frame on the tenant's channel. Redis runs scripts one at a time and
//! delivers one channel's messages in order, so every node hears a group's events in offset
//! order, and each node (the writer too) delivers what it hears: per-group order is the same
//! everywhere, and a node's own events keep the order it emitted them in (one queue, one
//! connection, scripts run in the order sent).
//!
//! Keys, per group (see `keys`): a hash `offset:{s}:{g}` with `offset` and `epoch`, one key so
//! that eviction cannot take one without the other, and a stream `history:{s}:{g}` whose entry
//! ids are the offsets. Both expire after `history.ttl_ms` without an event; a group whose hash
//! is gone starts again at 1 in a new epoch, and its old history is deleted then. The epoch a
//! client sees is the group's epoch and the tenant's generation (`epoch` key): a node that
//! could not number some events (Redis away, or its queue full) changes the generation before
//! it numbers again, so no client recovers across events that were never numbered. A Redis
//! that lost its data (FLUSHALL, a restart without persistence) has no epoch left: the next
//! event makes a new one, so every resume from before gets a fresh `sync`.
//!
//! Entries also hold the Redis time they were added at: a resume is served only when every
//! missed event is younger than the ttl (the stream keeps up to `size` entries otherwise).

use super::echoes::Echoes;
use super::keys::KeySpace;
use super::subscriber::Local;
use super::target::RedisTarget;
use crate::fanout::frame::{Position, StreamEvent};
use crate::fanout::history::Bounds;
use crate::storage::{BusMessage, Resumed, SharedHistory};
use async_trait::async_trait;
use redis::Script;
use redis::aio::ConnectionManager;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;
use tokio::sync::oneshot;

/// How long a recovery waits for the hub to catch up (see `RedisHistory::flushed`); past
/// it, the join gets a `sync` instead, which never repeats an event.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// Makes the group's epoch (ARGV[1]) and the tenant's generation when missing; returns the
/// group's full epoch in `epoch`. Deletes an orphaned history when the epoch is new. The hub
/// reads the generation after the last '.' (`Position::at_or_before`), so neither part has one.
const EPOCH_OF: &str = r"
local function epoch_of(meta, log, gen_key, candidate, ttl)
  if redis.call('HSETNX', meta, 'epoch', candidate) == 1 then
    redis.call('DEL', log)
    redis.call('PEXPIRE', meta, ttl)
  end
  local gen = redis.call('GET', gen_key)
  if not gen then
    gen = candidate
    redis.call('SET', gen_key, gen)
  end
  return redis.call('HGET', meta, 'epoch') .. '.' .. gen
end
";

/// KEYS: offsets hash, history stream, generation. ARGV: channel, epoch candidate, the frame
/// without its closing brace, size, ttl ms. Returns the offset given.
static NUMBER_SOURCE: LazyLock<String> = LazyLock::new(|| {
    format!(
        r#"{EPOCH_OF}
local ttl = tonumber(ARGV[5])
local epoch = epoch_of(KEYS[1], KEYS[2], KEYS[3], ARGV[2], ttl)
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
redis.call('PEXPIRE', KEYS[1], ttl)
local frame = ARGV[3] .. ',"offset":' .. offset .. ',"epoch":"' .. epoch .. '"}}'
local size = tonumber(ARGV[4])
if size > 0 then
  local now = redis.call('TIME')
  local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  redis.call('XADD', KEYS[2], 'MAXLEN', size, offset .. '-0', 't', ms, 'f', frame)
  redis.call('PEXPIRE', KEYS[2], ttl)
else
  redis.call('DEL', KEYS[2])
end
redis.call('PUBLISH', ARGV[1], frame)
return offset
"#
    )
});
static NUMBER: LazyLock<Script> = LazyLock::new(|| Script::new(&NUMBER_SOURCE));

/// KEYS as NUMBER. ARGV: epoch candidate, ttl ms, size, resume offset or '' , resume epoch.
/// Returns {recovered 0|1, epoch, offset, frames after the resume offset...}.
static SINCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{EPOCH_OF}
local ttl = tonumber(ARGV[2])
local epoch = epoch_of(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ttl)
local last = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
local size = tonumber(ARGV[3])
if ARGV[4] == '' or ARGV[5] ~= epoch or size == 0 then return {{0, epoch, last}} end
local from = tonumber(ARGV[4])
if from > last or last - from > size then return {{0, epoch, last}} end
local out = {{1, epoch, last}}
if from == last then return out end
local entries = redis.call('XRANGE', KEYS[2], (from + 1) .. '-0', '+')
if #entries ~= last - from or entries[1][1] ~= (from + 1) .. '-0' then return {{0, epoch, last}} end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if ms - tonumber(entries[1][2][2]) >= ttl then return {{0, epoch, last}} end
for _, e in ipairs(entries) do out[#out + 1] = e[2][4] end
return out
"
    ))
});

/// Changes the tenant's generation: ARGV[1] is the new one.
static NEW_GENERATION: LazyLock<Script> =
    LazyLock::new(|| Script::new("redis.call('SET', KEYS[1], ARGV[1]) return 1"));

/// One tenant's numbering in Redis; shared by its bus (writes) and its joins (reads).
pub struct RedisHistory {
    target: Arc<RedisTarget>,
    conn: ConnectionManager,
    keys: KeySpace,
    size: AtomicU64,
    ttl_ms: AtomicU64,
    /// Names epochs made by this node: random per process, then a count.
    prefix: String,
    made: AtomicU64,
    /// Set while a new generation for an iii node's events is on its way.
    renewing: AtomicBool,
    /// The bus's events delivered here unnumbered, and its queue to the hub (see `resume`).
    echoes: OnceLock<(Arc<Echoes>, Local)>,
}

impl RedisHistory {
    pub fn new(target: Arc<RedisTarget>, conn: ConnectionManager, keys: KeySpace) -> Self {
        let bounds = Bounds::default();
        RedisHistory {
            target,
            conn,
            keys,
            size: AtomicU64::new(bounds.size as u64),
            ttl_ms: AtomicU64::new(bounds.ttl.as_millis() as u64),
            prefix: uuid::Uuid::new_v4().simple().to_string()[..10].to_owned(),
            made: AtomicU64::new(0),
            renewing: AtomicBool::new(false),
            echoes: OnceLock::new(),
        }
    }

    /// Tells the history of the bus's events delivered unnumbered, and of its queue to the hub.
    pub fn hear_echoes(&self, echoes: Arc<Echoes>, local: Local) {
        let _ = self.echoes.set((echoes, local));
    }

    /// Waits until the hub has handled what the bus queued for it so far, when some of it may
    /// be the local copy of an event a recovery from Redis holds: that copy then reaches the
    /// joining subscription while it is still held, where the release drops it (see
    /// `Hub::release_after`), and not live after the recovery. False when the hub does not
    /// answer within `FLUSH_WAIT`.
    async fn flushed(&self) -> bool {
        let Some((_, local)) = self.echoes.get().filter(|(e, _)| e.recent()) else {
            return true;
        };
        let (tx, rx) = oneshot::channel();
        local.deliver(BusMessage::Flush(tx));
        // A full queue drops the flush (and gives a gap, which resynchronises): not waited for.
        matches!(tokio::time::timeout(FLUSH_WAIT, rx).await, Ok(Ok(())))
    }
    pub fn set_bounds(&self, bounds: Bounds) {
        self.size.store(bounds.size as u64, Ordering::Relaxed);
        self.ttl_ms
            .store(bounds.ttl.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    fn bounds(&self) -> (u64, u64) {
        (
            self.size.load(Ordering::Relaxed),
            self.ttl_ms.load(Ordering::Relaxed),
        )
    }

    /// A name no epoch of this tenant has had: this process's prefix and a count.
    fn candidate(&self) -> String {
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        format!("{}{n:x}", self.prefix)
    }

    /// The script that loads NUMBER, for a pipeline whose EVALSHA met NOSCRIPT.
    pub fn load_cmd() -> redis::Cmd {
        let mut cmd = redis::cmd("SCRIPT");
        cmd.arg("LOAD").arg(NUMBER_SOURCE.as_str());
        cmd
    }

    /// Adds the numbering and publication of `event` on `channel` to `pipe`.
    pub fn number(&self, pipe: &mut redis::Pipeline, event: &StreamEvent, channel: &str) {
        let (size, ttl) = self.bounds();
        let frame = event.to_value().to_string();
        let head = frame.strip_suffix('}').unwrap_or(&frame);
        let (s, g) = (&event.stream_name, &event.group_id);
        pipe.cmd("EVALSHA")
            .arg(NUMBER.get_hash())
            .arg(3)
            .arg(self.keys.offsets_key(s, g))
            .arg(self.keys.history_key(s, g))
            .arg(self.keys.generation_key())
            .arg(channel)
            .arg(self.candidate())
            .arg(head)
            .arg(size)
            .arg(ttl)
            .ignore();
    }

    /// What to do on hearing an event without an offset (an iii node's): give the tenant new
    /// epochs, once for a burst.
    pub fn on_unnumbered(self: Arc<Self>) -> Box<dyn Fn() + Send + Sync> {
        Box::new(move || {
            if self.renewing.swap(true, Ordering::AcqRel) {
                return;
            }
            let history = self.clone();
            tokio::spawn(async move {
                history.renewing.store(false, Ordering::Release);
                if let Err(e) = history.new_generation().await {
                    tracing::warn!(error = %format!("{e:#}"), "cannot give new epochs after an event from an iii node; clients may resume across it");
                }
            });
        })
    }

    /// Gives every group of the tenant a new epoch, after some events were numbered nowhere.
    pub async fn new_generation(&self) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        let mut call = NEW_GENERATION.key(self.keys.generation_key());
        call.arg(self.candidate());
        let _: i64 = self
            .target
            .run("the new-epoch script", call.invoke_async(&mut conn))
            .await?;
        Ok(())
    }
}

#[async_trait]
impl SharedHistory for RedisHistory {
    async fn resume(
        &self,
        stream: &str,
        group: &str,
        from: Option<&Position>,
    ) -> anyhow::Result<Resumed> {
        let (size, ttl) = self.bounds();
        let mut conn = self.conn.clone();
        let mut call = SINCE.key(self.keys.offsets_key(stream, group));
        call.key(self.keys.history_key(stream, group))
            .key(self.keys.generation_key())
            .arg(self.candidate())
            .arg(ttl)
            .arg(size)
            .arg(from.map_or(String::new(), |p| p.offset.to_string()))
            .arg(from.map_or("", |p| &*p.epoch));
        let (recovered, epoch, offset, frames): (u8, String, u64, Vec<String>) = {
            let reply: Vec<redis::Value> = self
                .target
                .run("the resume script", call.invoke_async(&mut conn))
                .await?;
            let mut reply = reply.into_iter();
            let mut next = || reply.next().unwrap_or(redis::Value::Nil);
            let recovered: u8 = redis::from_redis_value(next())?;
            let epoch: String = redis::from_redis_value(next())?;
            let offset: u64 = redis::from_redis_value(next())?;
            let frames = reply
                .map(redis::from_redis_value)
                .collect::<Result<Vec<String>, _>>()?;
            (recovered, epoch, offset, frames)
        };
        let at = Position {
            offset,
            epoch: epoch.into(),
        };
        Ok(
            if recovered == 1 && (frames.is_empty() || self.flushed().await) {
                Resumed::Recovered { frames, last: at }
            } else {
                Resumed::Sync(at)
            },
        )
    }
}
