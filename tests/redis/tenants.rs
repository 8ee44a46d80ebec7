//! Tenants on one Redis: each tenant's items, lists and events are its own, the `default`
//! tenant keeps iii's layout, and a node's tenants share one pub/sub connection.
//!
//! The adapters are driven directly (no engine), two "nodes" being two `connect` calls.
//! `REDIS_TENANT_SEED=S` replays the randomized case S; its seed is printed when it fails.

use super::RedisServer;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use streamhost::fanout::frame::{EventKind, StreamEvent};
use streamhost::limits::ValueLimits;
use streamhost::storage::redis::RedisAdapter;
use streamhost::storage::update_ops::UpdateOps;
use streamhost::storage::{BusMessage, EventBus, StreamAdapter};
use tokio::sync::mpsc;

/// Long enough for a busy machine; only reached when something is wrong.
const PATIENCE: Duration = Duration::from_secs(30);

/// The layout the README documents for a tenant other than `default`, written independently.
fn tenant_key(tenant: &str, kind: &str, stream: &str, group: &str) -> String {
    let enc = |s: &str| s.replace('%', "%25").replace(':', "%3A");
    format!(
        "streamhost:tenant:{tenant}:{kind}:{}:{}",
        enc(stream),
        enc(group)
    )
}

async fn all_keys(redis: &RedisServer) -> BTreeSet<String> {
    let mut raw = redis.raw().await;
    redis::cmd("KEYS")
        .arg("*")
        .query_async::<Vec<String>>(&mut raw)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// Whether `key` holds a tenant's offsets or history (`streamhost:` or a tenant's root, then
/// `epoch`, `offset:` or `history:`).
fn numbering_key(key: &str) -> bool {
    let Some(rest) = key.strip_prefix("streamhost:") else {
        return false;
    };
    let rest = match rest.strip_prefix("tenant:") {
        Some(t) => t.split_once(':').map_or("", |(_, rest)| rest),
        None => rest,
    };
    rest == "epoch" || rest.starts_with("offset:") || rest.starts_with("history:")
}

/// Keys that the default tenant's scans, iii's scans, or its order sets could take as theirs.
fn defaults_patterns_match(key: &str) -> bool {
    key.starts_with("stream:") || key.starts_with("streamhost:order:")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_a_b_group_c_and_stream_a_group_b_c_are_apart_in_a_tenant() {
    let redis = RedisServer::start();
    let default = RedisAdapter::connect(&redis.url()).await.unwrap();
    let acme = default.for_tenant("acme").unwrap();
    assert_eq!(acme.tenant(), "acme");
    assert_eq!(default.tenant(), "default");

    acme.set("a:b", "c", "i", json!(1).into()).await.unwrap();
    acme.set("a", "b:c", "i", json!(2).into()).await.unwrap();
    assert_eq!(
        acme.get("a:b", "c", "i").await.unwrap(),
        Some(json!(1).into())
    );
    assert_eq!(
        acme.get("a", "b:c", "i").await.unwrap(),
        Some(json!(2).into())
    );
    assert_eq!(acme.list("a:b", "c").await.unwrap(), [json!(1)]);
    assert_eq!(acme.list("a", "b:c").await.unwrap(), [json!(2)]);
    assert_eq!(acme.list_groups("a").await.unwrap(), ["b:c"]);
    assert_eq!(acme.list_groups("a:b").await.unwrap(), ["c"]);
    assert_eq!(
        acme.list_all().await.unwrap(),
        [
            ("a".to_owned(), vec!["b:c".to_owned()]),
            ("a:b".to_owned(), vec!["c".to_owned()]),
        ]
    );

    // Nothing of it is under the default tenant's patterns, nor seen by its scans.
    let keys = all_keys(&redis).await;
    let want: BTreeSet<String> = [("a:b", "c"), ("a", "b:c")]
        .iter()
        .flat_map(|(s, g)| ["stream", "order"].map(|kind| tenant_key("acme", kind, s, g)))
        .collect();
    assert_eq!(keys, want);
    assert!(!keys.iter().any(|k| defaults_patterns_match(k)), "{keys:?}");
    assert_eq!(default.list_all().await.unwrap(), []);
    assert!(default.list_groups("a").await.unwrap().is_empty());
    assert_eq!(default.get("a:b", "c", "i").await.unwrap(), None);

    // The default tenant's keys are iii's, byte for byte.
    default.set("a:b", "c", "j", json!(3).into()).await.unwrap();
    let keys = all_keys(&redis).await;
    let added: Vec<&String> = keys.difference(&want).collect();
    assert_eq!(added, ["stream:a:b:c", "streamhost:order:a:b:c"]);
    assert_eq!(acme.get("a:b", "c", "j").await.unwrap(), None);

    // Deleting a tenant's last item takes its keys with it.
    acme.delete("a:b", "c", "i").await.unwrap();
    acme.delete("a", "b:c", "i").await.unwrap();
    assert_eq!(
        all_keys(&redis).await,
        BTreeSet::from([
            "stream:a:b:c".to_owned(),
            "streamhost:order:a:b:c".to_owned()
        ])
    );

    // A tenant id that could reach into another key space is refused, and says what to use.
    for bad in ["", "Acme", "a:b", "a*", &"x".repeat(65)] {
        let e = default.for_tenant(bad).err().expect("refused").to_string();
        assert!(e.contains("a-z, 0-9"), "{bad}: {e}");
    }
}

/// xorshift64*: reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    }

    /// 1 to 3 pieces that an ambiguous encoding would confuse (`%3A` against `:`, and so on).
    fn name(&mut self, colons: bool) -> String {
        const PIECES: [&str; 12] = [
            "a", "b", ":", "%", "%3A", "%25", "{", "}", "*", "?", "[", "\\",
        ];
        let n = 1 + self.below(3);
        let mut name = String::new();
        while name.chars().count() < n {
            let piece = PIECES[self.below(PIECES.len())];
            if colons || !piece.contains(':') {
                name.push_str(piece);
            }
        }
        name
    }
}

const TENANTS: [&str; 3] = ["default", "acme", "acme-2"];

/// One tenant's expected data: stream -> group -> items in insertion order.
type Model = BTreeMap<String, BTreeMap<String, Vec<(String, Value)>>>;

struct Case {
    seed: u64,
    /// nodes[n][t]: tenant t's adapter on node n.
    nodes: Vec<Vec<RedisAdapter>>,
    models: Vec<Model>,
}

impl Case {
    /// A stream name for tenant `t`: the default tenant's layout is iii's, where a stream name
    /// with `:` is ambiguous, so its streams have none; its groups and items may.
    fn stream(&self, rng: &mut Rng, t: usize) -> String {
        rng.name(t != 0)
    }

    async fn check_group(&self, n: usize, t: usize, stream: &str, group: &str) {
        let (seed, a) = (self.seed, &self.nodes[n][t]);
        let items = self.models[t]
            .get(stream)
            .and_then(|g| g.get(group))
            .cloned()
            .unwrap_or_default();
        let values: Vec<Value> = items.iter().map(|(_, v)| v.clone()).collect();
        let ids: Vec<String> = items.iter().map(|(i, _)| i.clone()).collect();
        let what = format!("seed {seed}: tenant {} {stream:?}/{group:?}", TENANTS[t]);
        let listed: Vec<Value> = a
            .list(stream, group)
            .await
            .unwrap()
            .iter()
            .map(|j| j.to_value())
            .collect();
        assert_eq!(listed, values, "{what}");
        assert_eq!(a.list_ids(stream, group).await.unwrap(), ids, "{what}");
        for (id, value) in &items {
            assert_eq!(
                a.get(stream, group, id)
                    .await
                    .unwrap()
                    .map(|j| j.to_value())
                    .as_ref(),
                Some(value),
                "{what}/{id:?}"
            );
        }
    }

    async fn check_streams(&self, n: usize, t: usize, stream: &str) {
        let groups: Vec<String> = self.models[t]
            .get(stream)
            .map(|g| g.keys().cloned().collect())
            .unwrap_or_default();
        assert_eq!(
            self.nodes[n][t].list_groups(stream).await.unwrap(),
            groups,
            "seed {}: tenant {} list_groups({stream:?})",
            self.seed,
            TENANTS[t]
        );
    }

    /// Every tenant's every list, and every key in Redis, against the models.
    async fn check_everything(&self, redis: &RedisServer, n: usize) {
        let mut want_keys = BTreeSet::new();
        for (t, model) in self.models.iter().enumerate() {
            let all: Vec<(String, Vec<String>)> = model
                .iter()
                .map(|(s, g)| (s.clone(), g.keys().cloned().collect()))
                .collect();
            assert_eq!(
                self.nodes[n][t].list_all().await.unwrap(),
                all,
                "seed {}: tenant {} list_all",
                self.seed,
                TENANTS[t]
            );
            for (stream, groups) in model {
                self.check_streams(n, t, stream).await;
                for group in groups.keys() {
                    self.check_group(n, t, stream, group).await;
                    want_keys.extend(match TENANTS[t] {
                        "default" => [
                            format!("stream:{stream}:{group}"),
                            format!("streamhost:order:{stream}:{group}"),
                        ],
                        tenant => ["stream", "order"].map(|k| tenant_key(tenant, k, stream, group)),
                    });
                }
            }
        }
        let mut keys = all_keys(redis).await;
        // The offsets and history of the events (see `numbering_key`) are checked apart.
        keys.retain(|k| !numbering_key(k));
        assert_eq!(keys, want_keys, "seed {}: the keys in Redis", self.seed);
    }
}

/// Receives from a bus until `done` says so, checking that each event is of `tenant` and
/// came from the other node. Returns the sequence numbers of the events (not the probes).
async fn hear(
    rx: &mut mpsc::Receiver<BusMessage>,
    seed: u64,
    tenant: usize,
    from: usize,
    mut done: impl FnMut(&Value) -> bool,
) -> Vec<u64> {
    let mut seqs = Vec::new();
    loop {
        let message = tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("seed {seed}: tenant {} never heard what it waited for from node {from}; it heard {seqs:?}", TENANTS[tenant]))
            .expect("the bus stays open");
        // Numbered in Redis, so every node hears its own events back too.
        let event = match message {
            BusMessage::Numbered(event, _) => event,
            BusMessage::Event(event) => panic!("seed {seed}: an event not numbered: {event:?}"),
            BusMessage::Gap => continue, // a slow first subscription drops nothing here
            BusMessage::Presence(c) => {
                panic!("seed {seed}: a presence change with no member: {c:?}")
            }
            BusMessage::RostersLost => panic!("seed {seed}: rosters lost with no member"),
            other => panic!("seed {seed}: nothing here times out, yet: {other:?}"),
        };
        let data = event.to_value()["event"]["data"].clone();
        assert_eq!(
            data["tenant"].as_u64(),
            Some(tenant as u64),
            "seed {seed}: tenant {} heard {data} (from another tenant)",
            TENANTS[tenant]
        );
        if data["node"].as_u64() != Some(from as u64) {
            continue; // the listening node's own event
        }
        if let Some(seq) = data["seq"].as_u64() {
            seqs.push(seq);
        }
        if done(&data) {
            return seqs;
        }
    }
}

fn frame(tenant: usize, node: usize, extra: Value) -> StreamEvent {
    let mut data = json!({"tenant": tenant, "node": node});
    data.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    StreamEvent::new("events", TENANTS[tenant], None, EventKind::Create(data))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_only_their_own_items_lists_and_events() {
    let seed = std::env::var("REDIS_TENANT_SEED")
        .ok()
        .map(|s| s.parse().expect("REDIS_TENANT_SEED is a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("replay with REDIS_TENANT_SEED={seed}");
    let mut rng = Rng(seed | 1);
    let redis = RedisServer::start();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let base = RedisAdapter::connect(&redis.url()).await.unwrap();
        let mut adapters = Vec::new();
        for tenant in TENANTS {
            adapters.push(base.for_tenant(tenant).unwrap());
        }
        // Only the tenants' own adapters remain: the default one of `connect` goes.
        base.shutdown().await.unwrap();
        nodes.push(adapters);
    }
    let buses: Vec<Vec<Arc<dyn EventBus>>> = nodes
        .iter()
        .map(|n| n.iter().map(|a| a.event_bus().unwrap()).collect())
        .collect();
    let mut ears: Vec<Vec<mpsc::Receiver<BusMessage>>> = buses
        .iter()
        .map(|n| n.iter().map(|b| b.subscribe()).collect())
        .collect();

    // Each tenant's channel carries events both ways before the case starts.
    for t in 0..TENANTS.len() {
        for (from, node) in buses.iter().enumerate() {
            let to = 1 - from;
            let deadline = Instant::now() + PATIENCE;
            loop {
                node[t].publish(&frame(t, from, json!({"probe": true})));
                let heard = tokio::time::timeout(Duration::from_millis(200), async {
                    hear(&mut ears[to][t], seed, t, from, |_| true).await
                })
                .await;
                if heard.is_ok() {
                    break;
                }
                assert!(Instant::now() < deadline, "seed {seed}: no fan-out");
            }
        }
    }

    let mut case = Case {
        seed,
        nodes,
        models: vec![Model::new(); TENANTS.len()],
    };
    let limits = ValueLimits::default();
    let increment = UpdateOps::parse(
        &[json!({"type": "increment", "path": "n", "by": 1})],
        &limits,
    )
    .unwrap();
    // expected[to][t]: the events tenant t of node `to` must hear, and nothing else.
    let mut expected = vec![vec![BTreeSet::new(); TENANTS.len()]; 2];
    for step in 0..400u64 {
        let (t, n) = (rng.below(TENANTS.len()), rng.below(2));
        let stream = case.stream(&mut rng, t);
        let (group, item) = (rng.name(true), rng.name(true));
        let a = &case.nodes[n][t];
        let what = format!(
            "seed {seed} step {step}: tenant {} {stream:?}/{group:?}/{item:?}",
            TENANTS[t]
        );
        let groups = case.models[t].entry(stream.clone()).or_default();
        let items = groups.entry(group.clone()).or_default();
        let at = items.iter().position(|(id, _)| *id == item);
        let old = at.map(|i| items[i].1.clone());
        match rng.below(10) {
            0..=5 => {
                let value = json!({"tenant": TENANTS[t], "step": step});
                assert_eq!(
                    a.set(&stream, &group, &item, value.clone().into())
                        .await
                        .unwrap()
                        .value
                        .map(|j| j.to_value()),
                    old,
                    "{what}"
                );
                match at {
                    Some(i) => items[i].1 = value,
                    None => items.push((item.clone(), value)),
                }
            }
            6..=7 => {
                assert_eq!(
                    a.delete(&stream, &group, &item)
                        .await
                        .unwrap()
                        .value
                        .map(|j| j.to_value()),
                    old,
                    "{what}"
                );
                if let Some(i) = at {
                    items.remove(i);
                }
            }
            _ => {
                let outcome = a
                    .update(&stream, &group, &item, &increment)
                    .await
                    .unwrap()
                    .value;
                assert_eq!(outcome.old_value.map(|j| j.to_value()), old, "{what}");
                match at {
                    Some(i) => items[i].1 = outcome.new_value.to_value(),
                    None => items.push((item.clone(), outcome.new_value.to_value())),
                }
            }
        }
        if items.is_empty() {
            groups.remove(&group);
        }
        if groups.is_empty() {
            case.models[t].remove(&stream);
        }
        buses[n][t].publish(&frame(t, n, json!({"seq": step})));
        expected[1 - n][t].insert(step);

        // Read back through either node, and list a stream that may be any tenant's.
        let reader = rng.below(2);
        case.check_group(reader, t, &stream, &group).await;
        case.check_streams(reader, t, &stream).await;
        let other = case.stream(&mut rng, t);
        case.check_streams(reader, t, &other).await;
        if step % 50 == 49 {
            case.check_everything(&redis, rng.below(2)).await;
        }
    }
    case.check_everything(&redis, 0).await;

    // Each bus hears exactly its tenant's events from the other node.
    for to in 0..2 {
        for t in 0..TENANTS.len() {
            let want = &expected[to][t];
            let mut heard = BTreeSet::new();
            while heard.len() < want.len() {
                for seq in hear(&mut ears[to][t], seed, t, 1 - to, |_| true).await {
                    assert!(
                        want.contains(&seq) && heard.insert(seq),
                        "seed {seed}: event {seq} heard by tenant {} of node {to}, which did not expect it (or twice)",
                        TENANTS[t]
                    );
                }
            }
        }
    }
    // Every event has reached Redis, so one end marker per bus, heard on the node's one
    // connection after everything else, shows that no other tenant's event came too.
    for (n, node) in buses.iter().enumerate() {
        for (t, bus) in node.iter().enumerate() {
            bus.publish(&frame(t, n, json!({"end": true})));
        }
    }
    for (to, node) in ears.iter_mut().enumerate() {
        for (t, ear) in node.iter_mut().enumerate() {
            let late = hear(ear, seed, t, 1 - to, |d| d["end"] == true).await;
            assert!(late.is_empty(), "seed {seed}: events heard twice: {late:?}");
        }
    }
}

async fn subscribers(redis: &RedisServer, channel: &str) -> i64 {
    let mut raw = redis.raw().await;
    let (_, n): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(&mut raw)
        .await
        .unwrap();
    n
}

/// Waits until the channels' subscriber counts are `want`.
async fn wait_for_subscribers(redis: &RedisServer, want: &[(&str, i64)]) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut now = Vec::new();
        for (channel, _) in want {
            now.push((*channel, subscribers(redis, channel).await));
        }
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "subscribers {now:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn pubsub_connections(redis: &RedisServer) -> usize {
    let mut raw = redis.raw().await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut raw)
        .await
        .unwrap();
    list.lines().count()
}

/// A node subscribes to the tenants it has adapters for, all on one connection; after Redis
/// comes back, every tenant hears of the gap and its events flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_hears_the_nodes_tenants_and_each_learns_of_a_gap() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let node = RedisAdapter::connect(&redis.url()).await.unwrap();
    let acme = node.for_tenant("acme").unwrap();
    let other = node.for_tenant("other").unwrap();
    let default_channel = "stream::events";
    let (acme_channel, other_channel) = (
        "streamhost:tenant:acme:events",
        "streamhost:tenant:other:events",
    );
    wait_for_subscribers(
        &redis,
        &[
            (default_channel, 1),
            (acme_channel, 1),
            (other_channel, 1),
            ("streamhost:tenant:nobody:events", 0),
        ],
    )
    .await;
    assert_eq!(pubsub_connections(&redis).await, 1);
    // A tenant's adapter that goes away takes its subscription with it.
    other.shutdown().await.unwrap();
    drop(other);
    wait_for_subscribers(
        &redis,
        &[(default_channel, 1), (acme_channel, 1), (other_channel, 0)],
    )
    .await;

    let mut ears = [
        node.event_bus().unwrap().subscribe(),
        acme.event_bus().unwrap().subscribe(),
    ];
    redis.kill();
    redis = RedisServer::start_on(port);
    for ear in &mut ears {
        let message = tokio::time::timeout(PATIENCE, ear.recv())
            .await
            .expect("a gap")
            .unwrap();
        assert!(matches!(message, BusMessage::Gap), "{message:?}");
    }
    wait_for_subscribers(
        &redis,
        &[(default_channel, 1), (acme_channel, 1), (other_channel, 0)],
    )
    .await;
    assert_eq!(pubsub_connections(&redis).await, 1);

    // Another node's events reach each tenant again, on its own channel only.
    let peer = RedisAdapter::connect(&redis.url()).await.unwrap();
    let peer_acme = peer.for_tenant("acme").unwrap();
    let (peer_default, peer_acme) = (peer.event_bus().unwrap(), peer_acme.event_bus().unwrap());
    for (t, bus) in [(0, &peer_default), (1, &peer_acme)] {
        let deadline = Instant::now() + PATIENCE;
        loop {
            bus.publish(&frame(t, 1, json!({})));
            let heard = tokio::time::timeout(Duration::from_millis(200), ears[t].recv()).await;
            if let Ok(Some(BusMessage::Numbered(event, _))) = heard {
                assert_eq!(event.to_value()["event"]["data"]["tenant"], t, "{event:?}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "events of tenant {t} never came back"
            );
        }
    }
}
