//! Tenants on Redis, through two engine nodes: each tenant's writes reach only its own
//! clients on the other node, live under its own key prefix, and leave iii's layout (the
//! `default` tenant's) untouched.

use super::*;
use common::tenants::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_with_the_same_names_stay_apart_across_nodes() {
    let redis = RedisServer::start();
    let config = || Config {
        adapter: AdapterConfig::redis(redis.url()),
        ..two_tenants("")
    };
    let (one, two) = (start(config()).await, start(config()).await);
    let wa = RawWorker::connect_with_key(one.worker_addr, KEY_A).await;
    let wb = RawWorker::connect_with_key(one.worker_addr, KEY_B).await;
    let path = "/stream/chat/room";
    let mut ca = common::Client::connect_with_token(
        two.client_addr,
        path,
        &token("alpha", SECRET_A, &["*"], 300),
    )
    .await;
    let mut cb = common::Client::connect_with_token(
        two.client_addr,
        path,
        &token("beta", SECRET_B, &["*"], 300),
    )
    .await;
    assert_eq!(ca.next().await["event"]["type"], "sync");
    assert_eq!(cb.next().await["event"]["type"], "sync");

    let item = |who: &str, n: u64| json!({"stream_name": "chat", "group_id": "room", "item_id": "same", "data": {"by": who, "n": n}});
    for n in 0..20 {
        wa.ok("stream::set", item("alpha", n)).await;
        wb.ok("stream::set", item("beta", n)).await;
    }
    let mut last_of_alpha = Value::Null;
    for (client, who) in [(&mut ca, "alpha"), (&mut cb, "beta")] {
        for n in 0..20 {
            let frame = client.next().await;
            if who == "alpha" {
                last_of_alpha = frame.clone();
            }
            assert_eq!(
                frame["event"]["data"],
                json!({"by": who, "n": n}),
                "{who}'s client on the other node"
            );
        }
        assert!(client.try_next(Duration::from_millis(300)).await.is_none());
    }

    // Reads on the other node stay in the tenant too.
    let wa2 = RawWorker::connect_with_key(two.worker_addr, KEY_A).await;
    let get = json!({"stream_name": "chat", "group_id": "room", "item_id": "same"});
    assert_eq!(wa2.ok("stream::get", get.clone()).await["by"], "alpha");
    let anonymous = RawWorker::connect(two.worker_addr).await;
    assert_eq!(anonymous.ok("stream::get", get).await, Value::Null);

    // In Redis: one key per tenant, under its prefix; nothing in iii's layout.
    let mut raw = redis.raw().await;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut raw)
        .await
        .unwrap();
    keys.sort();
    assert!(
        keys.iter()
            .all(|k| k.starts_with("streamhost:tenant:alpha:")
                || k.starts_with("streamhost:tenant:beta:")),
        "{keys:?}"
    );
    assert!(
        keys.iter()
            .any(|k| k == "streamhost:tenant:alpha:stream:chat:room"),
        "{keys:?}"
    );
    assert!(
        keys.iter()
            .any(|k| k == "streamhost:tenant:beta:stream:chat:room"),
        "{keys:?}"
    );

    // Each tenant numbers its own group: twenty events each, in epochs of their own, and a
    // client of one tenant cannot resume from the other's position.
    let mut positions = Vec::new();
    for tenant in ["alpha", "beta"] {
        let (offset, epoch): (u64, String) = redis::cmd("HMGET")
            .arg(format!("streamhost:tenant:{tenant}:offset:chat:room"))
            .arg("offset")
            .arg("epoch")
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(offset, 20, "{tenant}");
        positions.push(epoch);
    }
    assert_ne!(positions[0], positions[1]);
    assert_eq!(last_of_alpha["offset"], 20);
    let mut cb = common::Client::connect_with_token(
        one.client_addr,
        "/",
        &token("beta", SECRET_B, &["*"], 300),
    )
    .await;
    cb.send_json(
        json!({"type": "join", "data": {"subscriptionId": "s", "streamName": "chat",
        "groupId": "room", "offset": last_of_alpha["offset"], "epoch": last_of_alpha["epoch"]}}),
    )
    .await;
    let sync = cb.next().await;
    assert_eq!(
        (&sync["event"]["type"], &sync["recovered"]),
        (&json!("sync"), &json!(false)),
        "{sync}"
    );
    assert_eq!(sync["event"]["data"][0]["by"], "beta");
    one.shutdown().await.unwrap();
    two.shutdown().await.unwrap();
}
