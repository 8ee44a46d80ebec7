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
  --function send|set   stream::send (ephemeral) or stream::set (stored) (default send)
  --window W            calls in flight per worker connection (default 256)
  --workers W           worker connections publishing in parallel (default 1)
  --stream NAME         stream name (default bench)
  --pause-ms MS         subscribers stop reading for MS at the start (a burst) (default 0)
  --idle-seconds S      hold the connections idle S seconds before publishing (default 0)
  --drain-seconds S     longest wait for deliveries after publishing (default 30)
  --engine-pid PID      read the engine's memory from /proc/PID/status
  --json FILE           also write the report as JSON";

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
    pub set: bool,
    pub window: usize,
    pub workers: usize,
    pub stream: String,
    pub pause_ms: u64,
    pub idle_seconds: u64,
    pub drain_seconds: u64,
    pub engine_pid: Option<u32>,
    pub json: Option<PathBuf>,
}

impl Options {
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
            set: false,
            window: 256,
            workers: 1,
            stream: "bench".into(),
            pause_ms: 0,
            idle_seconds: 0,
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
                    o.set = match value.as_str() {
                        "send" => false,
                        "set" => true,
                        v => bail!("--function takes send or set, not {v:?}"),
                    }
                }
                "--window" => o.window = num(&value)?.max(1) as usize,
                "--workers" => o.workers = num(&value)?.max(1) as usize,
                "--stream" => o.stream = value,
                "--pause-ms" => o.pause_ms = num(&value)?,
                "--idle-seconds" => o.idle_seconds = num(&value)?,
                "--drain-seconds" => o.drain_seconds = num(&value)?,
                "--engine-pid" => o.engine_pid = Some(num(&value)? as u32),
                "--json" => o.json = Some(PathBuf::from(value)),
                other => bail!("unknown option {other}"),
            }
        }
        Ok(o)
    }

    pub fn group_of(&self, seq: u64) -> usize {
        (seq % self.groups as u64) as usize
    }
}
