//! The worker protocol's finer points (spec section 6): `metadata` travels with invocations
//! and trigger calls, every call that has an id is answered even when it is malformed, and a
//! socket closed for what its peer sent says why with the RFC 6455 code.

mod common;

use common::{Client, RawWorker, WAIT, start, test_config};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// The next `invokefunction` frame that `worker` serves for `function_id`.
async fn served_call(worker: &mut RawWorker, function_id: &str) -> Value {
    loop {
        let frame = tokio::time::timeout(WAIT, worker.frames.recv())
            .await
            .expect("a call in time")
            .expect("the worker is connected");
        if frame["type"] == "invokefunction" && frame["function_id"] == function_id {
            return frame;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocation_metadata_reaches_the_serving_worker_unchanged() {
    let engine = start(test_config()).await;
    let mut server = RawWorker::connect(engine.worker_addr).await;
    server.register("app::echo", |d| Ok(Some(d))).await;
    let caller = RawWorker::connect(engine.worker_addr).await;

    let metadata = json!({"tenant": "acme", "trace": [1, {"deep": null}]});
    let answer = caller
        .call_frame(json!({"type": "invokefunction", "function_id": "app::echo", "data": {"x": 1}, "metadata": metadata}))
        .await;
    assert_eq!(answer["result"], json!({"x": 1}), "{answer}");
    let served = served_call(&mut server, "app::echo").await;
    assert_eq!(served["metadata"], metadata, "{served}");

    // No metadata: the field is left out, as iii leaves it out.
    caller.ok("app::echo", json!({"x": 2})).await;
    let served = served_call(&mut server, "app::echo").await;
    assert!(served.get("metadata").is_none(), "{served}");
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_metadata_goes_with_every_call_the_trigger_makes() {
    let engine = start(test_config()).await;
    let mut w = RawWorker::connect(engine.worker_addr).await;
    w.register("app::on_change", |_| Ok(None)).await;
    w.register("app::condition", |_| Ok(Some(json!(true))))
        .await;
    w.register("app::can_join", |_| Ok(Some(json!({})))).await;
    w.register("app::left", |_| Ok(None)).await;
    let stream_meta = json!({"source": "stream-trigger"});
    w.send_json(json!({"type": "registertrigger", "id": "t-stream", "trigger_type": "stream", "function_id": "app::on_change",
        "config": {"stream_name": "s", "condition_function_id": "app::condition"}, "metadata": stream_meta}));
    w.send_json(json!({"type": "registertrigger", "id": "t-join", "trigger_type": "stream:join", "function_id": "app::can_join",
        "config": {}, "metadata": {"source": "join"}}));
    w.send_json(json!({"type": "registertrigger", "id": "t-leave", "trigger_type": "stream:leave", "function_id": "app::left",
        "config": {}, "metadata": {"source": "leave"}}));
    w.sync().await;

    w.ok(
        "stream::set",
        json!({"stream_name": "s", "group_id": "g", "item_id": "i", "data": 1}),
    )
    .await;
    // The condition is called without the trigger's metadata, as iii calls it.
    let condition = served_call(&mut w, "app::condition").await;
    assert!(condition.get("metadata").is_none(), "{condition}");
    let handler = served_call(&mut w, "app::on_change").await;
    assert_eq!(handler["metadata"], stream_meta, "{handler}");

    let mut client = Client::connect(engine.client_addr, "/").await;
    assert_eq!(
        client.join("sub", "s", "g", None).await["event"]["type"],
        "sync"
    );
    let join = served_call(&mut w, "app::can_join").await;
    assert_eq!(join["metadata"], json!({"source": "join"}), "{join}");
    client
        .send_json(json!({"type": "leave", "data": {"subscriptionId": "sub", "streamName": "s", "groupId": "g"}}))
        .await;
    let leave = served_call(&mut w, "app::left").await;
    assert_eq!(leave["metadata"], json!({"source": "leave"}), "{leave}");
    engine.shutdown().await.unwrap();
}

/// `levels` nested arrays: `[[[]]]` for 3.
fn nested(levels: usize) -> String {
    format!("{}{}", "[".repeat(levels), "]".repeat(levels))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_calls_are_answered_with_what_was_wrong() {
    let engine = start(test_config()).await;
    let mut w = RawWorker::connect(engine.worker_addr).await;
    w.register("app::echo", |d| Ok(Some(d))).await;
    let error_of = |answer: Value| -> (String, String) {
        assert_eq!(answer["type"], "invocationresult", "{answer}");
        let e = &answer["error"];
        (
            e["code"].as_str().unwrap_or_default().to_owned(),
            e["message"].as_str().unwrap_or_default().to_owned(),
        )
    };

    // Well-formed JSON, wrong fields.
    let answer = w
        .call_frame(json!({"type": "invokefunction", "data": {}}))
        .await;
    let (code, message) = error_of(answer);
    assert_eq!(code, "invalid_message");
    assert!(message.contains("missing field `function_id`"), "{message}");
    let answer = w
        .call_frame(json!({"type": "invokefunction", "function_id": 5, "data": {}}))
        .await;
    let (code, message) = error_of(answer);
    assert_eq!(code, "invalid_message");
    assert!(
        message.starts_with("malformed invokefunction: function_id:"),
        "{message}"
    );

    // An id that is not a string comes back as it was sent.
    w.send_json(json!({"type": "invokefunction", "invocation_id": 42, "function_id": "app::echo", "data": {}}));
    let answer = tokio::time::timeout(WAIT, w.frames.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer["invocation_id"], 42, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_message", "{answer}");

    // serde_json reads at most 127 levels: the frame's own object and 126 in `data` pass...
    let answer = w
        .try_call_text(|id| {
            format!(
                r#"{{"type":"invokefunction","invocation_id":"{id}","function_id":"app::echo","data":{}}}"#,
                nested(126)
            )
        })
        .await
        .unwrap();
    assert!(answer["error"].is_null(), "{answer}");
    assert_eq!(answer["result"].to_string(), nested(126));
    // ...and one more level is answered with the reason, whichever way round the fields come.
    let answer = w
        .try_call_text(|id| {
            format!(
                r#"{{"data":{},"function_id":"app::echo","type":"invokefunction","invocation_id":"{id}"}}"#,
                nested(127)
            )
        })
        .await
        .unwrap();
    assert_eq!(answer["function_id"], "app::echo");
    let (code, message) = error_of(answer);
    assert_eq!(code, "deserialization_error");
    assert!(
        message.contains("recursion limit") && message.contains("127 levels"),
        "{message}"
    );

    // A string cut inside a surrogate pair, as JavaScript writes it.
    let answer = w
        .try_call_text(|id| {
            format!(
                r#"{{"type":"invokefunction","invocation_id":"{id}","function_id":"stream::set","data":{{"stream_name":"s","group_id":"g","item_id":"i","data":"hi \ud83d"}}}}"#
            )
        })
        .await
        .unwrap();
    let (code, message) = error_of(answer);
    assert_eq!(code, "deserialization_error");
    assert!(
        message.contains("surrogate") && message.contains("\\ud83d"),
        "{message}"
    );
    // A whole pair is fine.
    let answer = w
        .try_call_text(|id| {
            format!(
                r#"{{"type":"invokefunction","invocation_id":"{id}","function_id":"app::echo","data":"hi \ud83d\ude00"}}"#
            )
        })
        .await
        .unwrap();
    assert_eq!(answer["result"], "hi 😀", "{answer}");

    // A number past f64, to a worker's function and to a built-in one: the frame's data is
    // kept as text and read later, and is refused with the reason all the same.
    for (function, data) in [
        ("app::echo", "[1e400]".to_owned()),
        (
            "stream::set",
            r#"{"stream_name":"s","group_id":"g","item_id":"i","data":1e400}"#.to_owned(),
        ),
    ] {
        let answer = w
            .try_call_text(|id| {
                format!(r#"{{"type":"invokefunction","invocation_id":"{id}","function_id":"{function}","data":{data}}}"#)
            })
            .await
            .unwrap();
        let (code, message) = error_of(answer);
        assert_eq!(code, "deserialization_error", "{function}");
        assert!(
            message.contains("number out of range"),
            "{function}: {message}"
        );
    }

    // Not JSON at all, but the id is readable before the break.
    let answer = w
        .try_call_text(|id| {
            format!(r#"{{"type":"invokefunction","invocation_id":"{id}","data":{{"a":"#)
        })
        .await
        .unwrap();
    assert_eq!(error_of(answer).0, "deserialization_error");

    // Without an id (fire and forget) nothing is answered, and the worker keeps working.
    w.send_raw(Message::text(format!(
        r#"{{"type":"invokefunction","function_id":"app::echo","data":{}}}"#,
        nested(200)
    )));
    w.send_json(json!({"type": "invokefunction", "function_id": 7}));
    assert_eq!(w.ok("app::echo", json!("still here")).await, "still here");
    // (The frames seen are the calls this worker served itself, and any stray answer.)
    while let Ok(frame) = w.frames.try_recv() {
        assert_ne!(
            frame["type"], "invocationresult",
            "nothing answers a call without an id: {frame}"
        );
    }
    engine.shutdown().await.unwrap();
}

/// A worker speaking the protocol by hand, for answers a RawWorker would never write.
async fn hand_worker(addr: std::net::SocketAddr) -> common::Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}"))
        .await
        .unwrap();
    next_json(&mut ws).await; // workerregistered
    ws
}

async fn next_json(ws: &mut common::Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("readable");
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_answer_fails_the_call_at_once() {
    let mut config = test_config();
    // Long enough that a call failing by timeout could not pass for an answer.
    config.invocation_timeout = std::time::Duration::from_secs(600);
    let engine = start(config).await;
    let mut server = hand_worker(engine.worker_addr).await;
    server
        .send(Message::text(
            json!({"type": "registerfunction", "id": "app::cut"}).to_string(),
        ))
        .await
        .unwrap();
    let caller = RawWorker::connect(engine.worker_addr).await;
    caller.sync().await;
    let call = tokio::spawn(async move { caller.call("app::cut", json!({})).await });
    let invoke = next_json(&mut server).await;
    assert_eq!(invoke["function_id"], "app::cut");
    let id = invoke["invocation_id"].as_str().unwrap();
    let reply = format!(
        r#"{{"type":"invocationresult","invocation_id":"{id}","function_id":"app::cut","result":{{"text":"\ud83d"}}}}"#
    );
    server.send(Message::text(reply)).await.unwrap();
    let error = tokio::time::timeout(WAIT, call)
        .await
        .expect("the call fails at once, not at its timeout")
        .unwrap()
        .unwrap_err();
    assert_eq!(error["code"], "invalid_message", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("surrogate"),
        "{error}"
    );
    engine.shutdown().await.unwrap();
}

/// A text frame whose payload is not UTF-8: tungstenite's client will send it as a raw frame.
fn text_frame_not_utf8() -> Message {
    let payload = vec![b'{', 0xff, 0xfe, b'}'];
    Message::Frame(Frame::message(payload, OpCode::Data(Data::Text), true))
}

/// The close frame the engine sends, reading past anything before it.
async fn close_of(ws: &mut common::Ws) -> (u16, String) {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a close frame in time")
        {
            Some(Ok(Message::Close(Some(f)))) => return (f.code.into(), f.reason.to_string()),
            Some(Ok(Message::Close(None))) => panic!("closed without a code"),
            Some(Ok(_)) => continue,
            other => panic!("closed without a close frame: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_that_is_not_utf8_closes_with_1007() {
    let engine = start(test_config()).await;
    let mut client = Client::connect(engine.client_addr, "/").await;
    client.ws.send(text_frame_not_utf8()).await.unwrap();
    let (code, reason) = close_of(&mut client.ws).await;
    assert_eq!(code, 1007);
    assert!(reason.contains("UTF-8"), "{reason}");

    let mut worker = hand_worker(engine.worker_addr).await;
    worker.send(text_frame_not_utf8()).await.unwrap();
    let (code, reason) = close_of(&mut worker).await;
    assert_eq!(code, 1007);
    assert!(reason.contains("UTF-8"), "{reason}");

    // Everyone else is still served.
    let w = RawWorker::connect(engine.worker_addr).await;
    w.ok("stream::list_all", json!({})).await;
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_frame_over_64_mib_closes_with_1009_and_a_reason() {
    const LIMIT: usize = 64 << 20;
    let engine = start(test_config()).await;

    // At the limit: served (a ping of exactly 64 MiB gets its pong).
    let mut w = RawWorker::connect(engine.worker_addr).await;
    let head = r#"{"type":"ping","pad":""#;
    let pad = "x".repeat(LIMIT - head.len() - 2);
    let frame = format!(r#"{head}{pad}"}}"#);
    assert_eq!(frame.len(), LIMIT);
    w.send_raw(Message::text(frame));
    let pong = tokio::time::timeout(WAIT * 6, w.frames.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pong["type"], "pong");

    // One byte past it: closed with 1009 and the reason. The engine stops reading at the
    // frame's header, so the reader runs beside the writer to catch the close frame.
    let (mut sink, mut stream) = hand_worker(engine.worker_addr).await.split();
    let writer = tokio::spawn(async move {
        let _ = sink.send(Message::binary(vec![b'x'; LIMIT + 1])).await;
        sink
    });
    let (code, reason) = loop {
        match tokio::time::timeout(WAIT * 6, stream.next())
            .await
            .expect("a close frame in time")
        {
            Some(Ok(Message::Close(Some(f)))) => break (u16::from(f.code), f.reason.to_string()),
            Some(Ok(_)) => continue,
            other => panic!("closed without a close frame: {other:?}"),
        }
    };
    assert_eq!(code, 1009);
    assert!(
        reason.contains(&(LIMIT + 1).to_string()) && reason.contains(&LIMIT.to_string()),
        "{reason}"
    );
    drop(writer.await);
    // The other worker is still served.
    w.ok("stream::list_all", json!({})).await;
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_on_a_closed_raw_worker_fails_at_once() {
    let engine = start(test_config()).await;
    let w = RawWorker::connect(engine.worker_addr).await;
    w.ok("stream::list_all", json!({})).await;
    engine.shutdown().await.unwrap();
    // The first call may race the close; either way no call waits out the 120 s guard.
    for _ in 0..3 {
        let answer = tokio::time::timeout(WAIT, w.try_call_raw("stream::list_all", json!({})))
            .await
            .expect("a call on a closed worker fails at once");
        assert_eq!(answer, None);
    }
}
