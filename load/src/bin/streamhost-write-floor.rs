//! The floor for a worker's calls on this machine: the least a server can do and still answer
//! `stream::set` and `stream::get` over the worker socket as the wire contract asks. It is a
//! yardstick, not a design to copy, for `scripts/bench.sh --floor` to set beside streamhost and
//! Redis: what the WebSocket framing and the JSON of each call cost before any engine work.
//!
//! One thread. Each socket's ready frames are read as a batch: a call's payload is read borrowed
//! from the frame (no tree), a set's value kept as its text in a hash map (no item order, no
//! events, no limits, no auth), and the batch's answers (`{"old_value","new_value"}` for a set,
//! the value for a get) go out in one write. With `--durable DIR` every set is also appended to
//! a log that is synced before the answers go, one `fdatasync` for every socket's batches that
//! arrived meanwhile, as Redis's `appendfsync always` does. Nothing is read back at start.
//!
//! Usage: streamhost-write-floor [--durable DIR] [--worker-port 49134] [--port 3112]
//! It listens on 127.0.0.1 (the clients' port accepts and does nothing: bench.sh waits for it)
//! and prints `clients ws://ADDR workers ws://ADDR` once it does.

use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::rc::Rc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio_tungstenite::tungstenite::Message;

/// The engine's allocator: the floor should differ from the engine only in the work it skips.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A worker's frame, as much of it as the floor reads.
#[derive(Deserialize)]
struct Call<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    invocation_id: Option<&'a RawValue>,
    #[serde(borrow)]
    function_id: Cow<'a, str>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// A set's or a get's payload.
#[derive(Deserialize)]
struct Item<'a> {
    #[serde(borrow)]
    stream_name: Cow<'a, str>,
    #[serde(borrow)]
    group_id: Cow<'a, str>,
    #[serde(borrow)]
    item_id: Cow<'a, str>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// Items by `stream \0 group \0 item`, each value its JSON text.
type Items = HashMap<String, Box<str>>;

/// The log, and its syncs counted: a batch waits for the sync after its append.
struct Log {
    file: RefCell<File>,
    pending: RefCell<Vec<u8>>,
    wanted: Notify,
    synced: watch::Sender<u64>,
}

/// The value given after `flag`, if it is given.
fn option(args: &[String], flag: &str) -> Option<String> {
    let at = args.iter().position(|a| a == flag)?;
    let value = args
        .get(at + 1)
        .unwrap_or_else(|| panic!("{flag} takes a value"));
    Some(value.clone())
}

fn port(args: &[String], flag: &str, default: u16) -> u16 {
    option(args, flag).map_or(default, |p| {
        p.parse()
            .unwrap_or_else(|_| panic!("{flag} takes a port number, not {p:?}"))
    })
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let durable = option(&args, "--durable");
    let (client_port, worker_port) = (
        port(&args, "--port", 3112),
        port(&args, "--worker-port", 49134),
    );
    // In ordinary pages, as the engine's memory (see its `without_huge_pages`).
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let items: Rc<RefCell<Items>> = Rc::default();
        let log = match durable {
            Some(dir) => {
                std::fs::create_dir_all(&dir)?;
                let file = File::create(format!("{dir}/floor.log"))?;
                let log = Rc::new(Log {
                    file: RefCell::new(file),
                    pending: RefCell::default(),
                    wanted: Notify::new(),
                    synced: watch::Sender::new(0),
                });
                tokio::task::spawn_local(sync_forever(log.clone()));
                Some(log)
            }
            None => None,
        };
        let clients = TcpListener::bind(("127.0.0.1", client_port)).await?;
        let workers = TcpListener::bind(("127.0.0.1", worker_port)).await?;
        println!(
            "clients ws://{} workers ws://{}",
            clients.local_addr()?,
            workers.local_addr()?
        );
        tokio::task::spawn_local(async move { while clients.accept().await.is_ok() {} });
        loop {
            let (tcp, _) = workers.accept().await?;
            tcp.set_nodelay(true)?;
            tokio::task::spawn_local(serve(tcp, items.clone(), log.clone()));
        }
    })
}

/// Syncs what the sockets appended, once per turn of the runtime: every socket with ready
/// frames appends its batch before the sync runs (the thread is blocked meanwhile, as Redis's).
async fn sync_forever(log: Rc<Log>) {
    loop {
        log.wanted.notified().await;
        tokio::task::yield_now().await;
        let batch = std::mem::take(&mut *log.pending.borrow_mut());
        let mut file = log.file.borrow_mut();
        file.write_all(&batch).expect("the floor's log is writable");
        file.sync_data().expect("the floor's log syncs");
        log.synced.send_modify(|n| *n += 1);
    }
}

async fn serve(tcp: TcpStream, items: Rc<RefCell<Items>>, log: Option<Rc<Log>>) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    let hello = r#"{"type":"workerregistered","worker_id":"write-floor"}"#;
    if ws.send(Message::text(hello)).await.is_err() {
        return;
    }
    let mut answers: Vec<String> = Vec::new();
    while let Some(Ok(first)) = ws.next().await {
        let mut logged = false;
        let mut frame = Some(first);
        while let Some(message) = frame.take() {
            if let Message::Text(text) = message
                && let Some(answer) = answer(&text, &items, log.as_deref(), &mut logged)
            {
                answers.push(answer);
            }
            // The frames already read or readable without waiting join this batch.
            if let Some(Some(Ok(next))) = ws.next().now_or_never() {
                frame = Some(next);
            }
        }
        if let (Some(log), true) = (&log, logged) {
            log.wanted.notify_one();
            let mut synced = log.synced.subscribe();
            let after = *synced.borrow() + 1;
            if synced.wait_for(|n| *n >= after).await.is_err() {
                return;
            }
        }
        for answer in answers.drain(..) {
            if ws.feed(Message::text(answer)).await.is_err() {
                return;
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}

/// Applies one call and returns its answer; None for what is not a call.
fn answer(
    text: &str,
    items: &RefCell<Items>,
    log: Option<&Log>,
    logged: &mut bool,
) -> Option<String> {
    let call: Call = serde_json::from_str(text).ok()?;
    if call.kind != "invokefunction" {
        return None;
    }
    let id = call.invocation_id.map_or("null", RawValue::get);
    let item: Option<Item> = call.data.and_then(|d| serde_json::from_str(d.get()).ok());
    let key = |item: &Item| [&*item.stream_name, &*item.group_id, &*item.item_id].join("\0");
    // The answer is written in place, sized once: no tree, no reallocation.
    let mut out = String::with_capacity(160 + text.len());
    out.push_str(r#"{"type":"invocationresult","invocation_id":"#);
    out.push_str(id);
    out.push_str(r#","function_id":"#);
    match &*call.function_id {
        "stream::set" => out.push_str(r#""stream::set""#),
        "stream::get" => out.push_str(r#""stream::get""#),
        other => out.push_str(&serde_json::to_string(other).expect("a string serializes")),
    }
    out.push_str(r#","result":"#);
    match (&*call.function_id, item) {
        ("stream::set", Some(item)) => {
            let value = item.data.map_or("null", RawValue::get);
            let key = key(&item);
            if let Some(log) = log {
                let mut pending = log.pending.borrow_mut();
                pending.extend_from_slice(key.as_bytes());
                pending.push(b'\t');
                pending.extend_from_slice(value.as_bytes());
                pending.push(b'\n');
                *logged = true;
            }
            let old = items.borrow_mut().insert(key, value.into());
            out.push_str(r#"{"old_value":"#);
            out.push_str(old.as_deref().unwrap_or("null"));
            out.push_str(r#","new_value":"#);
            out.push_str(value);
            out.push('}');
        }
        ("stream::get", Some(item)) => match items.borrow().get(&key(&item)) {
            Some(value) => out.push_str(value),
            None => out.push_str("null"),
        },
        _ => out.push_str("null"),
    }
    out.push('}');
    Some(out)
}
