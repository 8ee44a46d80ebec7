//! A tenant's `stored_bytes` quota survives a restart: what its durable store already holds
//! is counted when the engine starts (or when the admin API puts a deleted tenant back), so
//! neither hands the quota back.

mod common;

use common::tenants::*;
use common::*;
use serde_json::{Value, json};
use streamhost::Config;
use streamhost::admin::AdminConfig;
use streamhost::config::AdapterConfig;
use streamhost::tenants::{Quotas, hash_key};

const OPERATOR: &str = "operator-key-for-the-stored-bytes-tests";

/// Items of 11 bytes as compact JSON: {"v":"abc"}.
const SIZE: u64 = 11;

fn config(dir: &std::path::Path, stored_bytes: u64) -> Config {
    let mut config = two_tenants("");
    config.adapter = AdapterConfig::KvFile {
        path: dir.join("store"),
    };
    let alpha = config.tenants.iter_mut().find(|t| t.id.as_str() == "alpha");
    alpha.unwrap().quotas = Quotas {
        stored_bytes: Some(stored_bytes),
        ..Quotas::UNLIMITED
    };
    config
}

fn set(id: &str) -> Value {
    json!({"stream_name": "chat", "group_id": "room", "item_id": id, "data": {"v": "abc"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_does_not_reset_the_stored_bytes_quota() {
    assert_eq!(json!({"v": "abc"}).to_string().len() as u64, SIZE);
    let dir = tempfile::tempdir().unwrap();
    let quota = 3 * SIZE;

    // Near the quota: two items of three.
    let engine = start(config(dir.path(), quota)).await;
    let a = RawWorker::connect_with_key(engine.worker_addr, KEY_A).await;
    a.ok("stream::set", set("1")).await;
    a.ok("stream::set", set("2")).await;
    drop(a);
    engine.shutdown().await.unwrap();

    // Restarted on the same store: the two are counted, so one more fits and no more.
    let engine = start(config(dir.path(), quota)).await;
    let a = RawWorker::connect_with_key(engine.worker_addr, KEY_A).await;
    let b = RawWorker::connect_with_key(engine.worker_addr, KEY_B).await;
    a.ok("stream::set", set("3")).await;
    let e = a.call("stream::set", set("4")).await.unwrap_err();
    assert_eq!(e["code"], "quota_exceeded", "{e}");
    let message = e["message"].as_str().unwrap();
    assert!(message.contains("`stored_bytes`"), "{message}");
    assert!(message.contains("33 of 33"), "{message}");
    let get = json!({"stream_name": "chat", "group_id": "room", "item_id": "4"});
    assert_eq!(a.ok("stream::get", get).await, Value::Null);
    // The other tenant's store is its own: beta is not held to alpha's bytes.
    b.ok("stream::set", set("4")).await;
    // A delete gives back bytes that were counted at start.
    let delete = json!({"stream_name": "chat", "group_id": "room", "item_id": "1"});
    a.ok("stream::delete", delete).await;
    a.ok("stream::set", set("4")).await;
    engine.shutdown().await.unwrap();
}

/// Deleting a tenant keeps its data; putting it back counts that data again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_put_back_through_the_admin_api_counts_its_stored_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 3 * SIZE);
    config.admin = Some(AdminConfig {
        host: "127.0.0.1".into(),
        port: 0,
        key_sha256: hash_key(OPERATOR),
    });
    let engine = start(config).await;
    let admin = engine.admin_addr.unwrap();
    let a = RawWorker::connect_with_key(engine.worker_addr, KEY_A).await;
    a.ok("stream::set", set("1")).await;
    a.ok("stream::set", set("2")).await;
    drop(a);

    let (status, shown) = http_request(admin, "GET", "/tenants/alpha", Some(OPERATOR), b"").await;
    assert_eq!(status, 200, "{shown}");
    let mut tenant: Value = serde_json::from_str(&shown).unwrap();
    let mut alpha = tenant["config"].take();
    alpha["clients"]["keys"][0]["secret"] = json!(SECRET_A);
    let (status, answer) =
        http_request(admin, "DELETE", "/tenants/alpha", Some(OPERATOR), b"").await;
    assert!((200..300).contains(&status), "{status} {answer}");
    let body = alpha.to_string();
    let (status, answer) = http_request(
        admin,
        "PUT",
        "/tenants/alpha",
        Some(OPERATOR),
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 201, "created again: {answer}");

    let a = RawWorker::connect_with_key(engine.worker_addr, KEY_A).await;
    a.ok("stream::set", set("3")).await;
    let e = a.call("stream::set", set("4")).await.unwrap_err();
    assert_eq!(e["code"], "quota_exceeded", "{e}");
    assert!(e["message"].as_str().unwrap().contains("33 of 33"), "{e}");
    engine.shutdown().await.unwrap();
}
