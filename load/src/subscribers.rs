//! Subscriber sockets: connect from several source addresses, join, then count what arrives.

use crate::Counters;
use crate::histogram::Histogram;
use crate::options::Options;
use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::net::TcpSocket;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// What one subscriber saw.
#[derive(Default)]
pub struct SubResult {
    pub group: usize,
    pub received: u64,
    pub duplicates: u64,
    pub lost: u64,
    pub latency: Histogram,
    pub last_delivery_ns: u64,
    /// The close code and reason, when the engine closed the socket.
    pub closed: Option<(u16, String)>,
    /// The connection ended with no close frame before the run was over.
    pub dropped: bool,
    /// It read without counting (`--read discard`): nothing can be said lost.
    pub discarded: bool,
    /// How it came back after the reconnect storm (`--storm-after`).
    pub recovery: Option<Recovery>,
    /// It could not join again after the storm within a minute.
    pub rejoin_failed: bool,
}

pub struct Subscribers {
    tasks: Vec<JoinHandle<SubResult>>,
    stop: watch::Sender<bool>,
    storm: Arc<watch::Sender<bool>>,
}

impl Subscribers {
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Sending true on it drops every subscriber's connection at once; each joins again
    /// from its last offset.
    pub fn storm_handle(&self) -> Arc<watch::Sender<bool>> {
        self.storm.clone()
    }
}

/// Events each group receives when `e` were published: seq = g, g + G, g + 2G, ... below e.
fn expected_for(o: &Options, e: u64, group: usize) -> u64 {
    let g = o.groups as u64;
    if (group as u64) < e % g {
        e / g + 1
    } else {
        e / g
    }
}

pub fn expected_total(o: &Options, published: u64) -> u64 {
    (0..o.subscribers)
        .map(|i| expected_for(o, published, i % o.groups))
        .sum()
}

fn target(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("ws://")
        .context("the client URL must start with ws://")?;
    let host_port = rest.split('/').next().unwrap_or(rest);
    let mut addrs = std::net::ToSocketAddrs::to_socket_addrs(host_port)
        .with_context(|| format!("cannot resolve {host_port}"))?;
    addrs.next().context("no address")
}

/// Opens every subscriber (256 connecting at a time) and waits until each has its `sync`.
pub async fn connect_all(
    o: &Options,
    epoch: Instant,
    counters: Arc<Counters>,
) -> anyhow::Result<Subscribers> {
    let addr = target(&o.client)?;
    let (stop, _) = watch::channel(false);
    let (storm, _) = watch::channel(false);
    let mut tasks = Vec::with_capacity(o.subscribers);
    let mut pending = Vec::new();
    for i in 0..o.subscribers {
        let (ready_tx, ready_rx) = oneshot::channel();
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % o.sources) as u8));
        let group = i % o.groups;
        let task = tokio::spawn(subscriber(
            o.clone(),
            addr,
            source,
            group,
            epoch,
            counters.clone(),
            stop.subscribe(),
            storm.subscribe(),
            ready_tx,
        ));
        tasks.push(task);
        pending.push(ready_rx);
        if pending.len() == 256 || i + 1 == o.subscribers {
            for (n, rx) in pending.drain(..).enumerate() {
                match rx.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => anyhow::bail!("subscriber {} could not join: {e}", i + 1 - n),
                    Err(_) => anyhow::bail!("a subscriber task ended before joining"),
                }
            }
        }
    }
    Ok(Subscribers {
        tasks,
        stop,
        storm: Arc::new(storm),
    })
}

/// Parses `"key":<digits>` after `from` in a frame without decoding the whole JSON.
fn number_after(text: &str, key: &str, from: usize) -> Option<(u64, usize)> {
    let at = text[from..].find(key)? + from + key.len();
    let digits = text[at..].bytes().take_while(u8::is_ascii_digit).count();
    Some((text[at..at + digits].parse().ok()?, at + digits))
}

/// Where a subscriber would resume from: the offset and epoch of the last frame it read.
#[derive(Default)]
struct Position {
    offset: Option<u64>,
    epoch: Option<String>,
}

impl Position {
    fn update(&mut self, text: &str) {
        let epoch = text.find("\"epoch\":\"").and_then(|at| {
            let rest = &text[at + 9..];
            rest.find('"').map(|end| rest[..end].to_owned())
        });
        if let (Some((offset, _)), Some(epoch)) = (number_after(text, "\"offset\":", 0), epoch) {
            self.offset = Some(offset);
            self.epoch = Some(epoch);
        }
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Connects and subscribes, from `resume` when it is known; returns the socket and its first
/// frame: the `sync`, or the `recovered` marker of a resumed join.
async fn open(
    o: &Options,
    addr: SocketAddr,
    source: IpAddr,
    url: &str,
    group_id: &str,
    resume: &Position,
) -> anyhow::Result<(Socket, String)> {
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::new(source, 0))
        .with_context(|| format!("cannot bind {source}"))?;
    let tcp = socket
        .connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    tcp.set_nodelay(true)?;
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await?;
    if !o.join_path {
        let mut data = serde_json::json!({"subscriptionId": "load", "streamName": o.stream, "groupId": group_id});
        if let (Some(offset), Some(epoch)) = (resume.offset, &resume.epoch) {
            data["offset"] = offset.into();
            data["epoch"] = epoch.as_str().into();
        }
        let join = serde_json::json!({"type": "join", "data": data});
        ws.send(Message::text(join.to_string())).await?;
    }
    match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) if t.contains("\"sync\"") || t.contains("\"recovered\"") => {
            Ok((ws, t.to_string()))
        }
        other => anyhow::bail!("expected a sync frame, got {other:?}"),
    }
}

/// What woke a subscriber.
enum Next {
    Frame(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    Stop,
    Storm,
}

#[allow(clippy::too_many_arguments)]
async fn subscriber(
    o: Options,
    addr: SocketAddr,
    source: IpAddr,
    group: usize,
    epoch: Instant,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
    mut storm: watch::Receiver<bool>,
    ready: oneshot::Sender<anyhow::Result<()>>,
) -> SubResult {
    let group_id = format!("g{group}");
    let mut url = if o.join_path {
        format!(
            "{}/stream/{}/{group_id}",
            o.client.trim_end_matches('/'),
            o.stream
        )
    } else {
        o.client.clone()
    };
    if let Some(tenant) = &o.tenant {
        // An anonymous client of that tenant (it must have `token_required: false`).
        let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
        if !rest.contains('/') {
            url.push('/');
        }
        let sep = if url.contains('?') { '&' } else { '?' };
        url += &format!("{sep}tenant={tenant}");
    }
    let mut at = Position::default();
    let mut ws = match open(&o, addr, source, &url, &group_id, &at).await {
        Ok((ws, sync)) => {
            at.update(&sync);
            let _ = ready.send(Ok(()));
            ws
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return SubResult::default();
        }
    };
    if o.pause_ms > 0 {
        tokio::time::sleep(Duration::from_millis(o.pause_ms)).await;
    }
    if o.discard {
        return discard(ws.into_inner(), group, stop).await;
    }
    let most = expected_for(&o, o.events, group);
    let mut seen = vec![0u64; (most as usize).div_ceil(64)];
    let mut r = SubResult {
        group,
        ..SubResult::default()
    };
    let mut stormed = o.storm_after.is_none();
    loop {
        let next = tokio::select! {
            msg = ws.next() => Next::Frame(msg),
            _ = stop.changed() => Next::Stop,
            _ = storm.changed(), if !stormed => Next::Storm,
        };
        let msg = match next {
            Next::Frame(msg) => msg,
            Next::Stop => break,
            Next::Storm => {
                stormed = true;
                match rejoin(&o, addr, source, &url, &group_id, &mut at, ws).await {
                    Ok((socket, recovery)) => {
                        ws = socket;
                        r.recovery = Some(recovery);
                        continue;
                    }
                    Err(e) => {
                        eprintln!("a subscriber could not rejoin: {e:#}");
                        r.rejoin_failed = true;
                        return r;
                    }
                }
            }
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(frame))) => {
                r.closed = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                if r.closed.as_ref().is_some_and(|c| c.0 == 4008) {
                    counters.closed_slow.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => {
                r.dropped = true;
                break;
            }
        };
        let now = epoch.elapsed().as_nanos() as u64;
        at.update(&text);
        let Some((seq, from)) = number_after(&text, "\"seq\":", 0) else {
            if text.contains("quota_exceeded") {
                counters.client_quota_errors.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        };
        let Some((sent, _)) = number_after(&text, "\"t\":", from) else {
            continue;
        };
        let slot = (seq / o.groups as u64) as usize;
        let (word, bit) = (slot / 64, 1u64 << (slot % 64));
        if word >= seen.len() {
            continue;
        }
        if seen[word] & bit != 0 {
            r.duplicates += 1;
            continue;
        }
        seen[word] |= bit;
        r.received += 1;
        r.latency.record(now.saturating_sub(sent) / 1000);
        r.last_delivery_ns = now;
        counters.delivered.fetch_add(1, Ordering::Relaxed);
    }
    let _ = ws.close(None).await;
    r
}

/// How a subscriber came back after the storm dropped it.
#[derive(Debug, Clone, Copy)]
pub struct Recovery {
    /// The engine answered with the missed events (`recovered` marker), not a fresh `sync`.
    pub recovered: bool,
    /// From the drop to that first frame.
    pub micros: u64,
}

/// Drops the connection without a word, as a network would, and joins again from `at`,
/// retrying (with backoff) for up to a minute while the engine refuses or is busy.
async fn rejoin(
    o: &Options,
    addr: SocketAddr,
    source: IpAddr,
    url: &str,
    group_id: &str,
    at: &mut Position,
    ws: Socket,
) -> anyhow::Result<(Socket, Recovery)> {
    drop(ws.into_inner());
    let dropped = Instant::now();
    let mut backoff = Duration::from_millis(50);
    loop {
        match open(o, addr, source, url, group_id, at).await {
            Ok((ws, first)) => {
                let recovered = first.contains("\"recovered\":true");
                at.update(&first);
                let micros = dropped.elapsed().as_micros() as u64;
                return Ok((ws, Recovery { recovered, micros }));
            }
            Err(e) if dropped.elapsed() > Duration::from_secs(60) => return Err(e),
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Reads and drops the socket's bytes, undecoded, until told to stop; an unsolicited pong
/// every few seconds keeps the engine from taking the socket for dead.
async fn discard(
    mut tcp: tokio::net::TcpStream,
    group: usize,
    mut stop: watch::Receiver<bool>,
) -> SubResult {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // FIN + pong, masked, empty payload, zero mask key.
    const PONG: [u8; 6] = [0x8A, 0x80, 0, 0, 0, 0];
    let mut buf = vec![0u8; 64 << 10];
    let mut keepalive = tokio::time::interval(Duration::from_secs(5));
    let mut r = SubResult {
        group,
        discarded: true,
        ..SubResult::default()
    };
    loop {
        tokio::select! {
            read = tcp.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    r.dropped = true;
                    break;
                }
                Ok(_) => {}
            },
            _ = keepalive.tick() => {
                if tcp.write_all(&PONG).await.is_err() {
                    r.dropped = true;
                    break;
                }
            }
            _ = stop.changed() => break,
        }
    }
    r
}

/// Stops every subscriber and collects what each saw; `published` events were sent.
pub async fn finish(subs: Subscribers, o: &Options, published: u64) -> Vec<SubResult> {
    let _ = subs.stop.send(true);
    let mut out = Vec::with_capacity(subs.tasks.len());
    for t in subs.tasks {
        let mut r = t.await.unwrap_or_default();
        if !r.discarded {
            r.lost = expected_for(o, published, r.group).saturating_sub(r.received);
        }
        out.push(r);
    }
    out
}
