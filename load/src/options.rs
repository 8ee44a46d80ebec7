//! Command-line options.

use anyhow::{Context, bail};
use std::path::PathBuf;

pub const USAGE: &str = "usage: streamhost-load [options]

  --client URL          client socket (default ws://127.0.0.1:3112)
  --worker URL          worker socket (default ws://127.0.0.1:49134)
  --subscribers N       subscriber sockets (default 1000)
  --groups G            groups the subscribers are spread over (default 1)
  --join frame|path     subscribe with a join frame on / or at /stream/S/G (default frame)
  --sources K           127.0.0.x source addresses to spread sockets over (default 8)
  --events E            events to publish, spread round-robin over the groups (default 1000)
  --size S              bytes of padding in each event (default 100)
  --rate R              events per second; 0 publishes as fast as the window allows (default 0)
  --function send|set|get
                        stream::send (ephemeral), stream::set (stored), or stream::get of one
                        stored item (each worker stores it first; --item names it) (default send)
  --window W            calls in flight per worker connection (default 256)
  --workers W           worker connections publishing in parallel (default 1)
  --stream NAME         stream name (default bench)
  --seconds S           stop publishing after S seconds even if events remain (default: none)
  --item ID             every stream::set writes (or stream::get reads) this item id (default:
                        one item per event for set, `bench-item` for get)
  --adapter FILE        bind a WebAssembly component first (streamhost::create_stream); worker
                        w then writes to its own stream NAME-w, bound to it
  --adapter-limits JSON the binding's limits (default {\"timeout_ms\": 100})
  --tenant ID           subscribers join as anonymous clients of tenant ID (?tenant=ID)
  --worker-key KEY      workers send Authorization: Bearer KEY (the tenant's worker key)
  --read count|discard  subscribers count and time each event, or read and discard the bytes
                        undecoded: for load that is not measured, such as another tenant's
                        fan-out, so that it costs this machine little (default count)
  --storm-after S       S seconds into publishing, every subscriber drops its connection at
                        once and joins again from the last offset it saw (a reconnect storm);
                        the report says how many recovered and how long until all had
  --pause-ms MS         subscribers stop reading for MS at the start (a burst) (default 0)
  --idle-seconds S      hold the connections idle S seconds before publishing (default 0)
  --start-when FILE     once connected, wait (at most 5 min) until FILE exists, then publish:
                        another load generator can start in between (see bench-tenants.sh)
  --drain-seconds S     longest wait for deliveries after publishing (default 30)
  --engine-pid PID      read the engine's memory (/proc/PID/status) and its CPU time over the run
                        (/proc/PID/task/*/schedstat): per delivery and per call
  --json FILE           also write the report as JSON";

/// What each publishing call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    Send,
    Set,
    Get,
}

impl Function {
    pub fn id(self) -> &'static str {
        match self {
            Function::Send => "stream::send",
            Function::Set => "stream::set",
            Function::Get => "stream::get",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub client: String,
    pub worker: String,
    pub subscribers: usize,
    pub groups: usize,
    pub join_path: bool,
    pub sources: usize,
    pub events: u64,
    pub size: usize,
    pub rate: f64,
    pub function: Function,
    pub window: usize,
    pub workers: usize,
    pub stream: String,
    pub seconds: Option<f64>,
    pub item: Option<String>,
    pub adapter: Option<PathBuf>,
    pub adapter_limits: serde_json::Value,
    pub tenant: Option<String>,
    pub worker_key: Option<String>,
    pub pause_ms: u64,
    /// Subscribers discard what arrives without decoding it (`--read discard`).
    pub discard: bool,
    /// Seconds into publishing at which every subscriber drops and rejoins.
    pub storm_after: Option<f64>,
    pub idle_seconds: u64,
    pub start_when: Option<PathBuf>,
    pub drain_seconds: u64,
    pub engine_pid: Option<u32>,
    pub json: Option<PathBuf>,
}

impl Options {
    /// The item `--function get` reads.
    pub fn get_item(&self) -> &str {
        self.item.as_deref().unwrap_or("bench-item")
    }

    pub fn parse(args: impl Iterator<Item = String>) -> anyhow::Result<Options> {
        let mut o = Options {
            client: "ws://127.0.0.1:3112".into(),
            worker: "ws://127.0.0.1:49134".into(),
            subscribers: 1000,
            groups: 1,
            join_path: false,
            sources: 8,
            events: 1000,
            size: 100,
            rate: 0.0,
            function: Function::Send,
            window: 256,
            workers: 1,
            stream: "bench".into(),
            seconds: None,
            item: None,
            adapter: None,
            adapter_limits: serde_json::json!({"timeout_ms": 100}),
            tenant: None,
            worker_key: None,
            pause_ms: 0,
            discard: false,
            storm_after: None,
            idle_seconds: 0,
            start_when: None,
            drain_seconds: 30,
            engine_pid: None,
            json: None,
        };
        let mut args = args.peekable();
        while let Some(flag) = args.next() {
            if flag == "--help" || flag == "-h" {
                println!("{USAGE}");
                std::process::exit(0);
            }
            let value = args
                .next()
                .with_context(|| format!("{flag} needs a value"))?;
            let num = |v: &str| {
                v.parse::<u64>()
                    .with_context(|| format!("{flag} takes a whole number, not {v:?}"))
            };
            match flag.as_str() {
                "--client" => o.client = value,
                "--worker" => o.worker = value,
                "--subscribers" => o.subscribers = num(&value)? as usize,
                "--groups" => o.groups = num(&value)?.max(1) as usize,
                "--join" => {
                    o.join_path = match value.as_str() {
                        "frame" => false,
                        "path" => true,
                        v => bail!("--join takes frame or path, not {v:?}"),
                    }
                }
                "--sources" => o.sources = num(&value)?.clamp(1, 250) as usize,
                "--events" => o.events = num(&value)?,
                "--size" => o.size = num(&value)? as usize,
                "--rate" => {
                    o.rate = value
                        .parse()
                        .with_context(|| format!("--rate takes a number, not {value:?}"))?
                }
                "--function" => {
                    o.function = match value.as_str() {
                        "send" => Function::Send,
                        "set" => Function::Set,
                        "get" => Function::Get,
                        v => bail!("--function takes send, set or get, not {v:?}"),
                    }
                }
                "--window" => o.window = num(&value)?.max(1) as usize,
                "--workers" => o.workers = num(&value)?.max(1) as usize,
                "--stream" => o.stream = value,
                "--seconds" => {
                    o.seconds = Some(
                        value
                            .parse()
                            .with_context(|| format!("--seconds takes a number, not {value:?}"))?,
                    )
                }
                "--item" => o.item = Some(value),
                "--adapter" => o.adapter = Some(PathBuf::from(value)),
                "--adapter-limits" => {
                    o.adapter_limits = serde_json::from_str(&value).with_context(|| {
                        format!("--adapter-limits takes a JSON object, not {value:?}")
                    })?
                }
                "--tenant" => o.tenant = Some(value),
                "--worker-key" => o.worker_key = Some(value),
                "--read" => {
                    o.discard = match value.as_str() {
                        "count" => false,
                        "discard" => true,
                        v => bail!("--read takes count or discard, not {v:?}"),
                    }
                }
                "--storm-after" => {
                    o.storm_after =
                        Some(value.parse().with_context(|| {
                            format!("--storm-after takes seconds, not {value:?}")
                        })?)
                }
                "--pause-ms" => o.pause_ms = num(&value)?,
                "--idle-seconds" => o.idle_seconds = num(&value)?,
                "--start-when" => o.start_when = Some(PathBuf::from(value)),
                "--drain-seconds" => o.drain_seconds = num(&value)?,
                "--engine-pid" => o.engine_pid = Some(num(&value)? as u32),
                "--json" => o.json = Some(PathBuf::from(value)),
                other => bail!("unknown option {other}"),
            }
        }
        if o.storm_after.is_some() && (o.join_path || o.discard) {
            bail!(
                "--storm-after needs subscribers that join with frames and count (--join frame --read count): a resumed join carries the offset in its frame"
            );
        }
        Ok(o)
    }

    /// The stream worker `w` writes to: its own when it binds an adapter (calls on one
    /// adapter instance run one at a time, so one stream per worker keeps them all busy).
    pub fn stream_of(&self, w: usize) -> String {
        if self.adapter.is_some() {
            format!("{}-{w}", self.stream)
        } else {
            self.stream.clone()
        }
    }

    pub fn group_of(&self, seq: u64) -> usize {
        (seq % self.groups as u64) as usize
    }
}
