//! Resuming over Redis: offsets and history live in Redis, so a client resumes on any node,
//! and on a restarted one. Lost Redis data, a history too short, or events Redis could not
//! number all end in a fresh `sync` (`recovered:false`), never in wrong events.

use super::*;
use streamhost::fanout::history::HistoryConfig;

fn with_history(url: &str, size: usize) -> Config {
    let mut config = redis_config(url);
    config.history = HistoryConfig {
        size: Some(size),
        ttl_ms: None,
    };
    config
}

/// A `stream::send` of `n` on chat/room.
fn send(n: u64) -> Value {
    json!({"stream_name": "chat", "group_id": "room", "type": "tick", "data": n})
}

/// Joins chat/room from the offset and epoch of `last`.
async fn resume(c: &mut Client, last: &Value) {
    c.send_json(
        json!({"type": "join", "data": {"subscriptionId": "s", "streamName": "chat",
        "groupId": "room", "offset": last["offset"], "epoch": last["epoch"]}}),
    )
    .await;
}

/// What an event frame carries: a write's value, or a `stream::send`'s data.
fn data(frame: &Value) -> &Value {
    match frame["event"]["type"].as_str() {
        Some("event") => &frame["event"]["event"]["data"],
        _ => &frame["event"]["data"],
    }
}

/// An observer of chat/room: a write's event has been numbered once it reads it.
async fn observer(addr: std::net::SocketAddr) -> Client {
    let mut c = Client::connect(addr, "/stream/chat/room").await;
    assert_eq!(c.next().await["event"]["type"], "sync");
    c
}

/// Expects the marker of a recovery from `last`, then exactly `want` (the events' data), each
/// marked recovered with consecutive offsets; returns the last frame.
async fn recovered(c: &mut Client, last: &Value, want: &[Value]) -> Value {
    let marker = c.next().await;
    assert_eq!(marker["event"]["type"], "recovered", "{marker}");
    assert_eq!(marker["recovered"], true);
    assert_eq!(
        (&marker["offset"], &marker["epoch"]),
        (&last["offset"], &last["epoch"])
    );
    assert_eq!(marker["event"]["data"]["missed"], want.len(), "{marker}");
    let mut at = last.clone();
    for data in want {
        let frame = c.next().await;
        assert_eq!(self::data(&frame), data, "{frame}");
        assert_eq!(frame["recovered"], true, "{frame}");
        assert_eq!(frame["epoch"], last["epoch"]);
        assert_eq!(
            frame["offset"],
            at["offset"].as_u64().unwrap() + 1,
            "{frame}"
        );
        at = frame;
    }
    at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_another_node_with_exactly_what_it_missed() {
    let redis = RedisServer::start();
    let (one, two) = (
        start(redis_config(&redis.url())).await,
        start(redis_config(&redis.url())).await,
    );
    let (w1, w2) = (
        RawWorker::connect(one.worker_addr).await,
        RawWorker::connect(two.worker_addr).await,
    );
    wait_for_fan_out(&w2, one.client_addr).await;
    let mut watch = observer(two.client_addr).await;
    let mut c = Client::connect(one.client_addr, "/").await;
    let sync = c.join("s", "chat", "room", None).await;
    w1.ok("stream::set", with("chat", "room", "a", json!(1)))
        .await;
    let last = c.next().await;
    assert_eq!(last["offset"], sync["offset"].as_u64().unwrap() + 1);
    assert_eq!(last["epoch"], sync["epoch"]);
    drop(c);

    // Missed while away: writes and sends on both nodes.
    w2.ok("stream::set", with("chat", "room", "b", json!(2)))
        .await;
    w1.ok("stream::send", send(3)).await;
    w2.ok("stream::send", send(4)).await;
    w1.ok("stream::delete", at("chat", "room", "a")).await;
    // Once the observer has all five (`a` and the four), everything is numbered. Events of
    // two nodes are numbered in the order they reach Redis: the observer saw that order.
    let seen = exactly(&mut watch, 5).await;
    for pair in seen.windows(2) {
        assert_eq!(pair[1]["offset"], pair[0]["offset"].as_u64().unwrap() + 1);
    }
    let missed: Vec<Value> = seen[1..].iter().map(|f| data(f).clone()).collect();
    let mut sorted: Vec<String> = missed.iter().map(Value::to_string).collect();
    sorted.sort();
    assert_eq!(sorted, ["1", "2", "3", "4"]);

    // The other node: exactly the missed events, then live ones.
    let mut c = Client::connect(two.client_addr, "/").await;
    resume(&mut c, &last).await;
    let at = recovered(&mut c, &last, &missed).await;
    assert_eq!(at, {
        let mut frame = seen[4].clone();
        frame["recovered"] = json!(true);
        frame
    });
    w1.ok("stream::send", send(5)).await;
    let live = exactly(&mut c, 1).await.remove(0);
    assert_eq!(data(&live), 5);
    assert_eq!(live["offset"], at["offset"].as_u64().unwrap() + 1);
    assert!(live.get("recovered").is_none(), "{live}");

    // The same node serves it as well, from the same history.
    let mut c = Client::connect(one.client_addr, "/").await;
    resume(&mut c, &last).await;
    recovered(&mut c, &last, &[missed, vec![json!(5)]].concat()).await;
    one.shutdown().await.unwrap();
    two.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_engine_keeps_its_offsets() {
    let redis = RedisServer::start();
    let engine = start(redis_config(&redis.url())).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let mut c = Client::connect(engine.client_addr, "/").await;
    c.join("s", "chat", "room", None).await;
    w.ok("stream::send", send(1)).await;
    let last = c.next().await;
    drop(c);
    let mut watch = observer(engine.client_addr).await;
    w.ok("stream::send", send(2)).await;
    watch.next().await;
    drop((w, watch));
    engine.shutdown().await.unwrap();

    let engine = start(redis_config(&redis.url())).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let mut watch = observer(engine.client_addr).await;
    w.ok("stream::send", send(3)).await;
    assert_eq!(
        watch.next().await["offset"],
        last["offset"].as_u64().unwrap() + 2,
        "offsets go on after the restart"
    );
    let mut c = Client::connect(engine.client_addr, "/").await;
    resume(&mut c, &last).await;
    recovered(&mut c, &last, &[json!(2), json!(3)]).await;
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_redis_data_means_a_new_epoch_and_a_fresh_sync() {
    let redis = RedisServer::start();
    let engine = start(redis_config(&redis.url())).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let mut c = Client::connect(engine.client_addr, "/").await;
    c.join("s", "chat", "room", None).await;
    w.ok("stream::set", with("chat", "room", "a", json!(1)))
        .await;
    let last = c.next().await;
    drop(c);

    let mut raw = redis.raw().await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut raw).await.unwrap();
    let mut watch = observer(engine.client_addr).await;
    w.ok("stream::set", with("chat", "room", "b", json!(2)))
        .await;
    let after = watch.next().await;
    assert_eq!(after["offset"], 1, "offsets restart: {after}");
    assert_ne!(after["epoch"], last["epoch"], "so the epoch changed");

    let mut c = Client::connect(engine.client_addr, "/").await;
    resume(&mut c, &last).await;
    let sync = exactly(&mut c, 1).await.remove(0);
    assert_eq!(sync["event"]["type"], "sync", "{sync}");
    assert_eq!(sync["recovered"], false);
    assert_eq!(sync["event"]["data"], json!([2]));
    assert_eq!(
        (&sync["offset"], &sync["epoch"]),
        (&json!(1), &after["epoch"])
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_history_holds_exactly_its_size() {
    let redis = RedisServer::start();
    let engine = start(with_history(&redis.url(), 3)).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let mut watch = observer(engine.client_addr).await;
    let mut frames = Vec::new();
    for n in 1..=5 {
        w.ok("stream::send", send(n)).await;
        frames.push(watch.next().await);
    }
    // From frame 2 (offset 2), three events follow: exactly the size.
    let mut c = Client::connect(engine.client_addr, "/").await;
    resume(&mut c, &frames[1]).await;
    recovered(&mut c, &frames[1], &[json!(3), json!(4), json!(5)]).await;
    // From frame 1, four follow: one past the size, so a fresh sync.
    let mut c = Client::connect(engine.client_addr, "/").await;
    resume(&mut c, &frames[0]).await;
    let sync = exactly(&mut c, 1).await.remove(0);
    assert_eq!(
        (&sync["event"]["type"], &sync["recovered"]),
        (&json!("sync"), &json!(false)),
        "{sync}"
    );
    assert_eq!(sync["offset"], frames[4]["offset"]);
    // Redis keeps no more than the size.
    let mut raw = redis.raw().await;
    let len: u64 = redis::cmd("XLEN")
        .arg("streamhost:history:chat:room")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(len, 3);
    let ttl: i64 = redis::cmd("PTTL")
        .arg("streamhost:offset:chat:room")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(ttl > 0, "an idle group's offsets expire: {ttl}");
    engine.shutdown().await.unwrap();
}

/// Events Redis refused to number are still delivered here, in an epoch of this node's own;
/// afterwards the tenant's epochs change, so no resume crosses the events Redis never held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_redis_could_not_number_end_the_epoch() {
    let redis = RedisServer::start();
    let engine = start(redis_config(&redis.url())).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let mut watch = observer(engine.client_addr).await;
    w.ok("stream::send", send(1)).await;
    let last = watch.next().await;

    let mut raw = redis.raw().await;
    let config = |value: &str| {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(value)
            .to_owned()
    };
    let _: () = config("1").query_async(&mut raw).await.unwrap();
    w.ok("stream::send", send(2)).await;
    let local = watch.next().await;
    assert_eq!(data(&local), 2);
    assert_ne!(
        local["epoch"], last["epoch"],
        "not numbered by Redis: {local}"
    );
    let _: () = config("0").query_async(&mut raw).await.unwrap();

    w.ok("stream::send", send(3)).await;
    let numbered = watch.next().await;
    assert_eq!(data(&numbered), 3);
    assert_ne!(numbered["epoch"], last["epoch"], "{numbered}");
    assert_ne!(numbered["epoch"], local["epoch"], "{numbered}");
    let mut c = Client::connect(engine.client_addr, "/").await;
    resume(&mut c, &last).await;
    let sync = exactly(&mut c, 1).await.remove(0);
    assert_eq!(sync["recovered"], false, "{sync}");
    assert_eq!(sync["epoch"], numbered["epoch"]);
    // From the new epoch, resuming works again.
    w.ok("stream::send", send(4)).await;
    watch.next().await;
    let mut c = Client::connect(engine.client_addr, "/").await;
    resume(&mut c, &numbered).await;
    recovered(&mut c, &numbered, &[json!(4)]).await;
    engine.shutdown().await.unwrap();
}

/// An iii node's event carries no offset and is in no shared history: it is delivered in the
/// node's own epoch, and the tenant's epochs change, so a resume from before it cannot skip it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iii_nodes_event_ends_the_epoch() {
    let redis = RedisServer::start();
    let engine = start(redis_config(&redis.url())).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let mut watch = observer(engine.client_addr).await;
    w.ok("stream::send", send(1)).await;
    let last = watch.next().await;
    let mut raw = redis.raw().await;
    let generation = || redis::cmd("GET").arg("streamhost:epoch").to_owned();
    let before: String = generation().query_async(&mut raw).await.unwrap();

    let iii_frame = json!({"type": "stream", "timestamp": 1, "streamName": "chat",
        "groupId": "room", "id": null, "event": {"type": "event", "event": {"type": "tick", "data": 2}}});
    let _: i64 = redis::cmd("PUBLISH")
        .arg("stream::events")
        .arg(iii_frame.to_string())
        .query_async(&mut raw)
        .await
        .unwrap();
    let heard = watch.next().await;
    assert_eq!(data(&heard), 2);
    assert_ne!(heard["epoch"], last["epoch"], "{heard}");
    // The new generation is set as the frame is heard.
    let deadline = Instant::now() + WAIT;
    while generation().query_async::<String>(&mut raw).await.unwrap() == before {
        assert!(Instant::now() < deadline, "the epochs never changed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c = Client::connect(engine.client_addr, "/").await;
    resume(&mut c, &last).await;
    let sync = exactly(&mut c, 1).await.remove(0);
    assert_eq!(sync["recovered"], false, "{sync}");
    engine.shutdown().await.unwrap();
}

/// Keeps Redis busy in a script for `ms`: every other command waits behind it.
async fn stall(redis: &RedisServer, ms: u64) {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let mut raw = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    let busy = "local t0 = redis.call('TIME') local start = t0[1] * 1000000 + t0[2] \
        while true do local t = redis.call('TIME') \
        if t[1] * 1000000 + t[2] - start > tonumber(ARGV[1]) * 1000 then break end end return 1";
    let _: i64 = redis::cmd("EVAL")
        .arg(busy)
        .arg(0)
        .arg(ms)
        .query_async(&mut raw)
        .await
        .unwrap();
}

/// Keeps Redis busy for `ms` (as `stall`), and returns once it is: a PING goes unanswered.
async fn stall_now(redis: RedisServer, ms: u64) -> tokio::task::JoinHandle<RedisServer> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut probe = client.get_multiplexed_async_connection().await.unwrap();
    let busy = tokio::spawn(async move {
        stall(&redis, ms).await;
        redis
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ping = redis::cmd("PING");
        let answer = ping.query_async::<String>(&mut probe);
        if tokio::time::timeout(Duration::from_millis(100), answer)
            .await
            .is_err()
        {
            return busy;
        }
        assert!(Instant::now() < deadline, "Redis never got busy");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_numbering_timed_out_but_ran_later_reaches_a_client_once() {
    let redis = RedisServer::start();
    let engine = start(redis_config(&redis.url())).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let mut watch = observer(engine.client_addr).await;
    w.ok("stream::send", send(1)).await;
    assert_eq!(data(&watch.next().await), 1);
    // Redis is busy past the engine's 3 s command timeout: the numbering of 2 times out, so
    // the engine delivers it itself; then Redis runs the batch after all and publishes it.
    let busy = tokio::spawn(async move {
        stall(&redis, 4_000).await;
        redis
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    w.ok("stream::send", send(2)).await;
    assert_eq!(data(&watch.next().await), 2);
    let _redis = busy.await.unwrap();
    w.ok("stream::send", send(3)).await;
    // 2 once, then 3: its numbered copy is not delivered again.
    let next = watch.next().await;
    assert_eq!(data(&next), 3, "{next}");
    assert!(watch.try_next(Duration::from_millis(500)).await.is_none());
}

/// A node answers a join from its own copy of the history it heard, when that covers the gap:
/// a reconnect storm is not one Redis round trip per client, and a busy Redis does not turn
/// every resume into a fresh `sync`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_resumes_a_client_from_what_it_heard_while_redis_is_busy() {
    let redis = RedisServer::start();
    let engine = start(redis_config(&redis.url())).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let mut c = observer(engine.client_addr).await;
    w.ok("stream::send", send(1)).await;
    let last = c.next().await;
    drop(c);
    let mut watch = observer(engine.client_addr).await;
    for n in 2..=3 {
        w.ok("stream::send", send(n)).await;
    }
    // Both heard back numbered: this node's copy holds them.
    let seen = exactly(&mut watch, 2).await;
    // Redis is busy past the engine's 3 s command timeout: a resume that asked it would get a
    // `sync` marked `recovered:false`.
    let busy = stall_now(redis, 4_000).await;
    let mut c = Client::connect(engine.client_addr, "/").await;
    resume(&mut c, &last).await;
    let at = recovered(&mut c, &last, &[json!(2), json!(3)]).await;
    assert_eq!(at["offset"], seen[1]["offset"]);
    assert!(!busy.is_finished(), "answered only after Redis was free");
    let _redis = busy.await.unwrap();
    w.ok("stream::send", send(4)).await;
    let live = exactly(&mut c, 1).await.remove(0);
    assert_eq!(data(&live), 4);
    assert_eq!(live["offset"], at["offset"].as_u64().unwrap() + 1);
    engine.shutdown().await.unwrap();
}

/// An event whose numbering timed out is delivered by its node in an epoch of its own, and
/// may be numbered by Redis later all the same. A client resuming from Redis meanwhile (on a
/// node that had not heard its gap) must get it once: from the recovery, not again as held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_redis_does_not_repeat_an_event_delivered_while_its_numbering_timed_out() {
    let redis = RedisServer::start();
    let one = start(redis_config(&redis.url())).await;
    let w1 = RawWorker::connect(one.worker_addr).await;
    let mut c = observer(one.client_addr).await;
    w1.ok("stream::send", send(1)).await;
    let last = c.next().await;
    drop(c);
    // A node that never heard 1: it has no copy of chat/room, so it resumes from Redis.
    let two = start(redis_config(&redis.url())).await;
    let w2 = RawWorker::connect(two.worker_addr).await;
    wait_for_fan_out(&w1, two.client_addr).await;
    // Redis busy for 3.6 s from t = 0, on its own connection. The engine's connection is one
    // pipe, in order: the numbering of 2 (sent at once, given up at about 3 s, so node two
    // delivers it itself) runs before the resume (sent at 1.8 s, within its 3 s).
    let busy = stall_now(redis, 3_600).await;
    let sent = tokio::spawn(async move {
        w2.ok("stream::send", send(2)).await;
        w2
    });
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    let mut c = Client::connect(two.client_addr, "/").await;
    resume(&mut c, &last).await;
    let at = recovered(&mut c, &last, &[json!(2)]).await;
    let _redis = busy.await.unwrap();
    let w2 = sent.await.unwrap();
    w2.ok("stream::send", send(3)).await;
    // 3 next: 2 is not delivered again, neither as held in node two's own epoch nor live.
    let next = exactly(&mut c, 1).await.remove(0);
    assert_eq!(data(&next), 3, "after {at}: {next}");
    assert!(c.try_next(Duration::from_millis(500)).await.is_none());
    one.shutdown().await.unwrap();
    two.shutdown().await.unwrap();
}
