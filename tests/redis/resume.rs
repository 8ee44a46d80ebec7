//! Resuming over Redis, two engines on one redis-server. Each node numbers the events its
//! clients get (other nodes' included): a client that reconnects to the same node recovers
//! what it missed, wherever it was written; one that lands on the other node cannot be served
//! from that node's numbering and gets a fresh `sync`, never wrong events.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_its_node_and_gets_a_fresh_sync_on_another() {
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
    let mut c = Client::connect(one.client_addr, "/").await;
    let sync = c.join("s", "chat", "room", None).await;
    w1.ok("stream::set", with("chat", "room", "a", json!(1)))
        .await;
    let last = c.next().await;
    assert_eq!(last["offset"], sync["offset"].as_u64().unwrap() + 1);
    drop(c);

    // Missed while away: one write on each node.
    w1.ok("stream::set", with("chat", "room", "b", json!(2)))
        .await;
    w2.ok("stream::set", with("chat", "room", "c", json!(3)))
        .await;

    // The other node: a fresh sync with everything.
    let mut elsewhere = Client::connect(two.client_addr, "/").await;
    resume(&mut elsewhere, &last).await;
    let sync = elsewhere.next().await;
    assert_eq!(sync["event"]["type"], "sync", "{sync}");
    assert_eq!(sync["recovered"], false);
    assert_eq!(sync["event"]["data"], json!([1, 2, 3]));

    // The same node: both missed events, the other node's too (it may still be on its way).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut c = Client::connect(one.client_addr, "/").await;
        resume(&mut c, &last).await;
        let marker = c.next().await;
        assert_eq!(marker["recovered"], true, "{marker}");
        if marker["event"]["data"]["missed"] == 2 {
            let missed = [c.next().await, c.next().await];
            let data: Vec<&Value> = missed.iter().map(|f| &f["event"]["data"]).collect();
            assert_eq!(data, [&json!(2), &json!(3)]);
            break;
        }
        assert!(Instant::now() < deadline, "{marker}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    one.shutdown().await.unwrap();
    two.shutdown().await.unwrap();
}

/// Joins `chat/room` from the offset and epoch of `last`.
async fn resume(c: &mut Client, last: &Value) {
    c.send_json(
        json!({"type": "join", "data": {"subscriptionId": "s", "streamName": "chat",
        "groupId": "room", "offset": last["offset"], "epoch": last["epoch"]}}),
    )
    .await;
}
