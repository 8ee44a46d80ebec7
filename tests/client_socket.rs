//! The client socket: both ways in, sync snapshots, the frames of every event, auth,
//! subprotocol echo, bad frames, the size limit and slow clients.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest, http::HeaderValue};

fn assert_frame(frame: &Value, stream: &str, group: &str, id: Option<&str>, event: Value) {
    assert_eq!(frame["type"], "stream", "{frame}");
    assert_eq!(frame["streamName"], stream, "{frame}");
    assert_eq!(frame["groupId"], group, "{frame}");
    assert_eq!(frame["id"], json!(id), "{frame}");
    assert!(
        frame["timestamp"].as_u64().unwrap() > 1_700_000_000_000,
        "{frame}"
    );
    assert_eq!(frame["event"], event, "{frame}");
    // Exactly the iii fields, plus the event's place in its group's history (issue 14),
    // which an `unauthorized` answer has none of.
    let extra = if frame["event"]["type"] == "unauthorized" {
        0
    } else {
        assert!(
            frame["offset"].is_u64() && frame["epoch"].is_string(),
            "{frame}"
        );
        2
    };
    assert_eq!(frame.as_object().unwrap().len(), 6 + extra, "{frame}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_gets_sync_then_every_kind_of_event() {
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    w.ok("stream::set", json!({"stream_name": "chat", "group_id": "room", "item_id": "m1", "data": {"text": "old"}})).await;

    let mut c = Client::connect(engine.client_addr, "/").await;
    let sync = c.join("sub-1", "chat", "room", None).await;
    assert_frame(
        &sync,
        "chat",
        "room",
        None,
        json!({"type": "sync", "data": [{"text": "old"}]}),
    );

    w.ok(
        "stream::set",
        json!({"stream_name": "chat", "group_id": "room", "item_id": "m2", "data": {"text": "hi"}}),
    )
    .await;
    assert_frame(
        &c.next().await,
        "chat",
        "room",
        Some("m2"),
        json!({"type": "create", "data": {"text": "hi"}}),
    );
    w.ok("stream::set", json!({"stream_name": "chat", "group_id": "room", "item_id": "m2", "data": {"text": "hi!"}})).await;
    assert_frame(
        &c.next().await,
        "chat",
        "room",
        Some("m2"),
        json!({"type": "update", "data": {"text": "hi!"}}),
    );
    w.ok("stream::update", json!({"stream_name": "chat", "group_id": "room", "item_id": "m2", "ops": [{"type": "set", "path": "n", "value": 1}]})).await;
    assert_frame(
        &c.next().await,
        "chat",
        "room",
        Some("m2"),
        json!({"type": "update", "data": {"text": "hi!", "n": 1}}),
    );
    w.ok(
        "stream::delete",
        json!({"stream_name": "chat", "group_id": "room", "item_id": "m2"}),
    )
    .await;
    assert_frame(
        &c.next().await,
        "chat",
        "room",
        Some("m2"),
        json!({"type": "delete", "data": {"text": "hi!", "n": 1}}),
    );
    w.ok("stream::send", json!({"stream_name": "chat", "group_id": "room", "type": "typing", "data": {"who": "ann"}})).await;
    assert_frame(
        &c.next().await,
        "chat",
        "room",
        None,
        json!({"type": "event", "event": {"type": "typing", "data": {"who": "ann"}}}),
    );

    // Other groups are not delivered; after a leave nothing is.
    w.ok(
        "stream::set",
        json!({"stream_name": "chat", "group_id": "elsewhere", "item_id": "x", "data": 1}),
    )
    .await;
    c.send_json(json!({"type": "leave", "data": {"subscriptionId": "sub-1", "streamName": "chat", "groupId": "room"}})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    w.ok(
        "stream::set",
        json!({"stream_name": "chat", "group_id": "room", "item_id": "m3", "data": 3}),
    )
    .await;
    assert_eq!(c.try_next(Duration::from_millis(300)).await, None);
    assert_eq!(engine.engine.default_space().hub.subscription_count(), 0);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_subscriptions_and_path_urls() {
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    w.ok(
        "stream::set",
        json!({"stream_name": "doc", "group_id": "g", "item_id": "a", "data": "A"}),
    )
    .await;

    let mut by_item = Client::connect(engine.client_addr, "/").await;
    assert_frame(
        &by_item.join("s", "doc", "g", Some("a")).await,
        "doc",
        "g",
        Some("a"),
        json!({"type": "sync", "data": "A"}),
    );
    let mut missing = Client::connect(engine.client_addr, "/").await;
    assert_frame(
        &missing.join("s", "doc", "g", Some("zz")).await,
        "doc",
        "g",
        Some("zz"),
        json!({"type": "sync", "data": null}),
    );

    let mut group_path = Client::connect(engine.client_addr, "/stream/doc/g").await;
    assert_frame(
        &group_path.next().await,
        "doc",
        "g",
        None,
        json!({"type": "sync", "data": ["A"]}),
    );
    let mut item_path = Client::connect(engine.client_addr, "/stream/doc/g/b").await;
    assert_frame(
        &item_path.next().await,
        "doc",
        "g",
        Some("b"),
        json!({"type": "sync", "data": null}),
    );

    w.ok(
        "stream::set",
        json!({"stream_name": "doc", "group_id": "g", "item_id": "b", "data": "B"}),
    )
    .await;
    w.ok(
        "stream::set",
        json!({"stream_name": "doc", "group_id": "g", "item_id": "a", "data": "A2"}),
    )
    .await;
    w.ok(
        "stream::send",
        json!({"stream_name": "doc", "group_id": "g", "type": "ping", "data": null, "id": "b"}),
    )
    .await;

    assert_eq!(
        by_item.next().await["event"],
        json!({"type": "update", "data": "A2"})
    );
    assert_eq!(
        item_path.next().await["event"],
        json!({"type": "create", "data": "B"})
    );
    assert_eq!(
        item_path.next().await["event"],
        json!({"type": "event", "event": {"type": "ping", "data": null}})
    );
    let got: Vec<Value> = vec![
        group_path.next().await["id"].clone(),
        group_path.next().await["id"].clone(),
        group_path.next().await["id"].clone(),
    ];
    assert_eq!(got, vec![json!("b"), json!("a"), json!("b")]);
    assert_eq!(
        by_item.try_next(Duration::from_millis(200)).await,
        None,
        "item subscribers get only their item"
    );
    assert_eq!(missing.try_next(Duration::from_millis(10)).await, None);

    // Joining twice with one subscription id replaces it; two subscriptions that match one
    // event still deliver it once per socket.
    let mut twice = Client::connect(engine.client_addr, "/").await;
    twice.join("s1", "doc", "g", Some("a")).await;
    twice.join("s1", "doc", "g", Some("b")).await;
    twice.join("s2", "doc", "g", None).await;
    w.ok(
        "stream::set",
        json!({"stream_name": "doc", "group_id": "g", "item_id": "b", "data": "B2"}),
    )
    .await;
    assert_eq!(twice.next().await["event"]["data"], "B2");
    assert_eq!(twice.try_next(Duration::from_millis(200)).await, None);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_an_error_and_the_socket_stays_open() {
    let mut config = test_config();
    config.max_frame_bytes = 4096;
    config.max_subscriptions = 3;
    let engine = start(config).await;
    let mut c = Client::connect(engine.client_addr, "/").await;
    c.ws.send(Message::text("{nope")).await.unwrap();
    let e = c.next().await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["error"]["code"], "invalid_frame");
    c.send_json(json!({"type": "join", "data": {"streamName": "s"}}))
        .await;
    let e = c.next().await;
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("subscriptionId"),
        "{e}"
    );
    c.send_json(json!({"type": "dance"})).await;
    assert_eq!(c.next().await["type"], "error");
    // Past max_subscriptions a join is refused; re-joining an existing id still works.
    for i in 0..3 {
        assert_eq!(
            c.join(&format!("s{i}"), "s", &format!("g{i}"), None).await["event"]["type"],
            "sync"
        );
    }
    let refused = c.join("s3", "s", "g3", None).await;
    assert_eq!(
        refused["error"]["code"], "too_many_subscriptions",
        "{refused}"
    );
    assert_eq!(c.join("s0", "s", "g9", None).await["event"]["type"], "sync");
    c.send_json(json!({"type": "leave", "data": {"subscriptionId": "s0", "streamName": "s", "groupId": "g9"}})).await;
    c.send_json(json!({"type": "leave", "data": {"subscriptionId": "s1", "streamName": "s", "groupId": "g1"}})).await;
    c.send_json(json!({"type": "leave", "data": {"subscriptionId": "s2", "streamName": "s", "groupId": "g2"}})).await;
    // Binary frames holding JSON are accepted too.
    c.ws.send(Message::binary(
        json!({"type": "join", "data": {"subscriptionId": "a", "streamName": "s", "groupId": "g"}})
            .to_string()
            .into_bytes(),
    ))
    .await
    .unwrap();
    assert_eq!(c.next().await["event"]["type"], "sync");
    // Pings get pongs.
    c.ws.send(Message::Ping(b"hi".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(Ok(Message::Pong(p))) = c.ws.next().await {
                return p;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(&pong[..], b"hi");

    // Over the limit: closed with 1009 and a reason; other clients are unaffected.
    let mut other = Client::connect(engine.client_addr, "/stream/s/g").await;
    other.next().await;
    c.ws.send(Message::text("x".repeat(10_000))).await.unwrap();
    let (code, reason) = c.close_frame().await.expect("a close frame");
    assert_eq!(code, 1009);
    assert!(reason.contains("4096"), "{reason}");
    let w = RawWorker::connect(engine.worker_addr).await;
    w.ok(
        "stream::set",
        json!({"stream_name": "s", "group_id": "g", "item_id": "i", "data": 1}),
    )
    .await;
    assert_eq!(other.next().await["event"]["type"], "create");
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offered_subprotocol_is_echoed() {
    let engine = start(test_config()).await;
    let mut req = format!("ws://{}/stream/s/g", engine.client_addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("token.abc123, other"),
    );
    let (_ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("the upgrade succeeds");
    assert_eq!(
        resp.headers().get("sec-websocket-protocol").unwrap(),
        "token.abc123"
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_function_refuses_or_passes_context_to_join_triggers() {
    let mut config = test_config();
    config.auth_function = Some("auth".into());
    let engine = start(config).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    w.register("auth", |req| {
        let token = req["query_params"]["token"][0].as_str().unwrap_or("");
        assert!(req["addr"].as_str().unwrap().starts_with("127.0.0.1:"));
        match token {
            "good" => Ok(Some(
                json!({"context": {"user": req["headers"]["x-user"], "path": req["path"]}}),
            )),
            "banned" => Ok(Some(json!({"allowed": false, "reason": "banned user"}))),
            _ => Err(json!({"code": "no_token", "message": "missing token"})),
        }
    })
    .await;
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let tx = std::sync::Mutex::new(tx);
    w.register("can_join", move |p| {
        tx.lock().unwrap().send(p.clone()).unwrap();
        Ok(Some(json!({"unauthorized": p["group_id"] == "secret"})))
    })
    .await;
    w.register_trigger("j", "stream:join", "can_join", json!({}))
        .await;

    let status = |url: String| async move {
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => (
                resp.status().as_u16(),
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
            ),
            other => panic!("expected a refusal, got {:?}", other.map(|r| r.1.status())),
        }
    };
    let (code, body) = status(format!("ws://{}/?token=banned", engine.client_addr)).await;
    assert_eq!((code, body.contains("banned user")), (403, true), "{body}");
    let (code, body) = status(format!("ws://{}/stream/s/g", engine.client_addr)).await;
    assert_eq!(
        (code, body.contains("missing token")),
        (401, true),
        "{body}"
    );

    let mut req = format!("ws://{}/?token=good", engine.client_addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("X-User", HeaderValue::from_static("ann"));
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut c = Client { ws };
    assert_eq!(
        c.join("a", "s", "open", None).await["event"]["type"],
        "sync"
    );
    let payload = rx.recv_timeout(WAIT).unwrap();
    assert_eq!(
        payload,
        json!({"subscription_id": "a", "stream_name": "s", "group_id": "open", "id": null, "context": {"user": "ann", "path": "/"}})
    );
    let refused = c.join("b", "s", "secret", Some("x")).await;
    assert_frame(
        &refused,
        "s",
        "secret",
        Some("x"),
        json!({"type": "unauthorized"}),
    );
    // A refused join subscribes to nothing.
    w.ok(
        "stream::set",
        json!({"stream_name": "s", "group_id": "secret", "item_id": "x", "data": 1}),
    )
    .await;
    assert_eq!(c.try_next(Duration::from_millis(200)).await, None);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_triggers_fire_on_leave_and_on_close() {
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let tx = std::sync::Mutex::new(tx);
    w.register("left", move |p| {
        tx.lock().unwrap().send(p).unwrap();
        Ok(None)
    })
    .await;
    w.register_trigger("l", "stream:leave", "left", json!({}))
        .await;
    let mut c = Client::connect(engine.client_addr, "/").await;
    c.join("a", "s", "g1", None).await;
    c.join("b", "s", "g2", Some("i")).await;
    c.send_json(json!({"type": "leave", "data": {"subscriptionId": "a", "streamName": "s", "groupId": "g1"}})).await;
    assert_eq!(rx.recv_timeout(WAIT).unwrap()["group_id"], "g1");
    drop(c);
    let p = rx.recv_timeout(WAIT).unwrap();
    assert_eq!(
        p,
        json!({"subscription_id": "b", "stream_name": "s", "group_id": "g2", "id": "i", "context": null})
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_closed_and_told_while_others_get_everything() {
    let mut config = test_config();
    config.send_queue_frames = 64;
    let engine = start(config).await;
    // A client that never reads: its socket buffers fill, then its queue.
    let mut stalled = Client::connect(engine.client_addr, "/stream/s/g").await;
    let mut healthy = Client::connect(engine.client_addr, "/stream/s/g").await;
    healthy.next().await;
    let w = RawWorker::connect(engine.worker_addr).await;
    let big = "x".repeat(16 * 1024);
    let events = 400;
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < events {
            let f = healthy.next().await;
            got.push(f["event"]["event"]["data"]["n"].as_u64().unwrap());
        }
        got
    });
    for n in 0..events {
        w.ok("stream::send", json!({"stream_name": "s", "group_id": "g", "type": "tick", "data": {"n": n, "pad": big}})).await;
    }
    let got = reader.await.unwrap();
    assert_eq!(
        got,
        (0..events as u64).collect::<Vec<_>>(),
        "the healthy client gets every event, in order"
    );
    assert_eq!(engine.engine.metrics.connections.closes().slow.get(), 1);
    // The stalled client, once it reads, finds what it was sent and then the reason it was cut.
    let mut frames = 0;
    let close = loop {
        match tokio::time::timeout(WAIT, stalled.ws.next()).await.unwrap() {
            Some(Ok(Message::Text(_))) => frames += 1,
            Some(Ok(Message::Close(f))) => break f,
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    let close = close.expect("a close frame with a reason");
    assert_eq!(u16::from(close.code), 4008);
    assert!(close.reason.contains("slow client"), "{}", close.reason);
    assert!(
        frames < events,
        "it was cut off before the end ({frames} frames)"
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_clients_with_going_away() {
    let engine = start(test_config()).await;
    let mut c = Client::connect(engine.client_addr, "/stream/s/g").await;
    c.next().await;
    engine.shutdown().await.unwrap();
    assert_eq!(c.close_frame().await.map(|f| f.0), Some(1001));
}

/// RFC 6455 5.5.1: a client's Close is answered with a Close and the TCP connection ends;
/// the engine keeps nothing of the socket afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_is_answered_and_nothing_lingers() {
    use tokio_tungstenite::tungstenite::protocol::{CloseFrame, frame::coding::CloseCode};
    let engine = start(test_config()).await;
    for path in ["/", "/stream/chat/room"] {
        let mut c = Client::connect(engine.client_addr, path).await;
        if path == "/" {
            c.join("s", "chat", "room", None).await;
        } else {
            c.next().await;
        }
        c.ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        })))
        .await
        .unwrap();
        let mut answered = None;
        let ended = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(msg) = c.ws.next().await {
                match msg {
                    Ok(Message::Close(frame)) => answered = frame.map(|f| u16::from(f.code)),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        })
        .await;
        assert_eq!(answered, Some(1000), "the close is answered with 1000");
        assert!(ended.is_ok(), "the engine closed the TCP connection");
    }
    // A client that just vanishes is cleaned up too.
    let mut gone = Client::connect(engine.client_addr, "/stream/chat/room").await;
    gone.next().await;
    drop(gone);
    let deadline = std::time::Instant::now() + WAIT;
    while engine.engine.client_count() > 0
        || engine.engine.default_space().hub.subscription_count() > 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{} connections still held",
            engine.engine.client_count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    engine.shutdown().await.unwrap();
}

/// A client that joins while an item is being written must never have its state taken back:
/// a `sync` older than an event that reached it before the `sync` would leave it stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_during_writes_never_leaves_a_client_behind() {
    let engine = start(test_config()).await;
    let writer = {
        let engine = engine.engine.clone();
        tokio::spawn(async move {
            for n in 0..30_000u64 {
                let data =
                    json!({"stream_name": "race", "group_id": "g", "item_id": "x", "data": n});
                engine.call("stream::set", data).await.unwrap();
            }
        })
    };
    let mut joins = 0;
    while !writer.is_finished() {
        let mut client = Client::connect(engine.client_addr, "/stream/race/g").await;
        let mut newest_event = None;
        loop {
            let frame = client.next().await;
            let event = &frame["event"];
            if event["type"] == "sync" {
                let synced = event["data"]
                    .as_array()
                    .unwrap()
                    .first()
                    .and_then(Value::as_u64);
                assert!(
                    synced >= newest_event,
                    "join {joins}: an event for {newest_event:?} came before a sync of {synced:?}"
                );
                break;
            }
            newest_event = newest_event.max(event["data"].as_u64());
        }
        joins += 1;
    }
    writer.await.unwrap();
    assert!(joins > 10, "only {joins} joins raced the writes");
    engine.shutdown().await.unwrap();
}
