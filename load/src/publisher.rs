//! The publisher: raw worker connections calling `stream::send`, `stream::set` or `stream::get`
//! (of one item each worker stores first: the read path, with nothing to fan out), with a
//! window of calls in flight, as fast as possible or at a fixed rate, for a number of events or
//! of seconds. The workers draw sequence numbers from one counter, so that what was published
//! is always 0..n, whichever worker stopped first: the subscribers' loss count relies on it.

use crate::calls::{Answer, CallFrames};
use crate::options::{Function, Options};
use crate::{Counters, adapter, refusals};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header::AUTHORIZATION};

/// Publishes every event; returns how many were sent.
pub async fn publish(o: &Options, epoch: Instant, counters: Arc<Counters>) -> anyhow::Result<u64> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..o.workers {
        tasks.push(tokio::spawn(worker(
            o.clone(),
            w,
            epoch,
            counters.clone(),
            next.clone(),
        )));
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await??;
    }
    Ok(sent)
}

async fn worker(
    o: Options,
    w: usize,
    epoch: Instant,
    counters: Arc<Counters>,
    next: Arc<AtomicU64>,
) -> anyhow::Result<u64> {
    let mut request = o.worker.as_str().into_client_request()?;
    if let Some(key) = &o.worker_key {
        request.headers_mut().insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {key}"))?,
        );
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await?;
    let stream_name = o.stream_of(w);
    adapter::bind(&o, &stream_name, &mut ws).await?;
    if o.function == Function::Get {
        store_item(&mut ws, &stream_name, o.get_item(), o.size).await?;
    }
    let (mut sink, mut stream) = ws.split();
    let window = Arc::new(Semaphore::new(o.window));
    let outstanding = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // When each call was sent, by invocation id: its answer gives the call's latency (a
    // victim's own calls can wait behind a neighbour's backlog as much as its deliveries).
    let sent_at = Arc::new(Mutex::new(HashMap::<u64, u64>::new()));
    let (win, out, ctr, at) = (
        window.clone(),
        outstanding.clone(),
        counters.clone(),
        sent_at.clone(),
    );
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            let Message::Text(text) = msg else { continue };
            if !text.contains("invocationresult") {
                continue;
            }
            let Some(answer) = Answer::read(&text) else {
                continue;
            };
            if let Some(t) = answer.seq().and_then(|seq| at.lock().unwrap().remove(&seq)) {
                let us = (epoch.elapsed().as_nanos() as u64).saturating_sub(t) / 1000;
                ctr.call_latency.lock().unwrap().record(us);
            }
            if let Some(code) = answer.error_code() {
                ctr.refusals.record(code);
                if ctr.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    eprintln!("a call failed: {}", v["error"]);
                }
            } else {
                ctr.acked.fetch_add(1, Ordering::Relaxed);
            }
            out.fetch_sub(1, Ordering::Relaxed);
            win.add_permits(1);
        }
        // The socket is gone: a send waiting for room in the window fails now, not never.
        win.close();
    });
    let item = match o.function {
        Function::Get => Some(o.get_item()),
        Function::Set | Function::Send => o.item.as_deref(),
    };
    let frames = CallFrames::new(o.function, &stream_name, item, o.size);
    let mut frame = String::new();
    let per_worker_rate = o.rate / o.workers as f64;
    let started = Instant::now();
    let mut sent = 0u64;
    loop {
        if o.seconds
            .is_some_and(|s| started.elapsed().as_secs_f64() >= s)
        {
            break;
        }
        if per_worker_rate > 0.0 {
            let due = started + Duration::from_secs_f64(sent as f64 / per_worker_rate);
            if due > Instant::now() {
                sink.flush().await?;
                tokio::time::sleep_until(due.into()).await;
            }
        }
        if window.available_permits() == 0 {
            sink.flush().await?;
        }
        window
            .acquire()
            .await
            .map_err(|_| anyhow::anyhow!("worker {w}: the engine closed the worker socket"))?
            .forget();
        let seq = next.fetch_add(1, Ordering::Relaxed);
        if seq >= o.events {
            break;
        }
        let t = epoch.elapsed().as_nanos() as u64;
        frames.write(&mut frame, seq, t, o.group_of(seq));
        sent_at.lock().unwrap().insert(seq, t);
        sink.feed(Message::text(frame.as_str())).await?;
        outstanding.fetch_add(1, Ordering::Relaxed);
        counters.sent.fetch_add(1, Ordering::Relaxed);
        sent += 1;
        if per_worker_rate > 0.0 || sent.is_multiple_of(32) {
            sink.flush().await?;
        }
    }
    sink.flush().await?;
    // Wait for the answers to every call.
    let deadline = Instant::now() + Duration::from_secs(o.drain_seconds);
    while outstanding.load(Ordering::Relaxed) > 0
        && Instant::now() < deadline
        && !reader.is_finished()
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    reader.abort();
    Ok(sent)
}

/// Stores the item that `--function get` reads, `size` bytes of padding like an event, and
/// waits for the engine's answer.
async fn store_item<S>(ws: &mut S, stream: &str, item: &str, size: usize) -> anyhow::Result<()>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error>
        + futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    let data = json!({"stream_name": stream, "group_id": "g0", "item_id": item, "data": {"p": "x".repeat(size)}});
    let frame = json!({"type": "invokefunction", "invocation_id": "store", "function_id": "stream::set", "data": data});
    ws.send(Message::text(frame.to_string())).await?;
    while let Some(msg) = ws.next().await {
        let Message::Text(text) = msg? else { continue };
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if v["invocation_id"] == "store" {
            anyhow::ensure!(
                refusals::error_code(&v).is_none(),
                "storing the item to read failed: {}",
                v["error"]
            );
            return Ok(());
        }
    }
    anyhow::bail!("the engine closed the worker socket before storing the item to read")
}
