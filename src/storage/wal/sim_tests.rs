//! The durable store under injected faults: seeded, randomized cases on the simulated disk.
//!
//! Each case opens a KvStore on a `SimDisk`, runs concurrent writers (sets, updates, deletes
//! and reads), injects faults (a call failing with EIO or ENOSPC once or for a while, a full
//! disk, a write torn part-way) and then either cuts the power at a random moment or stops the
//! engine cleanly, maybe flips a bit of the log, and recovers. Then:
//! - every acknowledged write is there with its value (or a later write that was not
//!   answered, or whose answer said it may be on disk);
//! - nothing refused as not stored is there, and no read ever saw it;
//! - recovery succeeds, or (only when a bit was flipped) refuses and names the damage.
//!
//! `WAL_FAULT_CASES=N` runs more cases; `WAL_FAULT_SEED=S` runs case S alone.

use super::LOG_NAME;
use super::sim::{Errno, Op, SimDisk};
use crate::json::Json;
use crate::storage::StreamAdapter;
use crate::storage::kv_store::KvStore;
use crate::storage::update_ops;
use crate::storage::wal::{Options, WriteError};
use serde_json::{Value, json};

/// A stored value as a tree, to compare with the model's.
fn tree(value: Option<Json>) -> Option<Value> {
    value.map(|v| v.to_value())
}
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

const DIR: &str = "/sim/store";
const WRITERS: usize = 3;
const ITEMS_PER_WRITER: usize = 3;

/// What may be stored for one item: the last acknowledged value (None: absent), and the
/// values of later writes that may or may not have reached the disk.
#[derive(Default, Clone)]
struct Item {
    acked: Option<Value>,
    maybe: Vec<Option<Value>>,
    /// Values refused as not stored: never to be read or recovered.
    refused: Vec<Value>,
}

impl Item {
    fn allowed(&self) -> Vec<Option<Value>> {
        let mut all = vec![self.acked.clone()];
        all.extend(self.maybe.iter().cloned());
        all
    }
}

#[derive(Default)]
struct Model {
    items: HashMap<String, Item>,
    cut: Option<SimDisk>,
    /// The writers stop (at a power cut, or for a clean stop).
    stopped: bool,
    ops: u64,
    acked: u64,
    refused: u64,
}

fn options(disk: &SimDisk) -> Options {
    Options {
        rewrite_min_bytes: 512 + disk.random(8 << 10),
        probe_first: Duration::from_millis(1),
        probe_max: Duration::from_millis(4),
        // From syncing as soon as records come (0) to waiting out a whole turn of the runtime.
        max_unready: Duration::from_millis(disk.random(8)),
    }
}

/// The update each writer makes: `v` counts up, `u` names the op.
fn update_ops(n: u64) -> update_ops::UpdateOps {
    let ops = [
        json!({"type": "increment", "path": "v", "by": 1}),
        json!({"type": "set", "path": "u", "value": n}),
    ];
    update_ops::UpdateOps::parse(&ops, &crate::limits::ValueLimits::default()).unwrap()
}

fn updated(base: &Option<Value>, n: u64) -> Value {
    let mut v = match base {
        Some(Value::Object(m)) => Value::Object(m.clone()),
        _ => json!({}),
    };
    let count = v.get("v").and_then(Value::as_i64).unwrap_or(0);
    v["v"] = json!(count + 1);
    v["u"] = json!(n);
    v
}

/// Schedules this case's faults on the disk.
fn plan_faults(disk: &SimDisk) -> Vec<String> {
    let ops = [
        Op::Append,
        Op::Sync,
        Op::Truncate,
        Op::SyncDir,
        Op::Rename,
        Op::Create,
        Op::Read,
    ];
    let mut plan = Vec::new();
    for _ in 0..disk.random(4) {
        let op = ops[disk.random(ops.len() as u64) as usize];
        let after = disk.random(40);
        let errno = if disk.random(2) == 0 {
            Errno::Eio
        } else {
            Errno::Enospc
        };
        if disk.random(3) == 0 {
            disk.fail_always(op, after, errno);
            plan.push(format!(
                "{op:?} fails with {errno:?} for good after {after}"
            ));
        } else {
            disk.fail_once(op, after, errno);
            plan.push(format!("{op:?} fails with {errno:?} once after {after}"));
        }
    }
    plan
}

/// A write's answer: the value it replaced and the value it stored.
type Answer = anyhow::Result<(Option<Value>, Option<Value>)>;

/// When the writers stop and what happens then.
#[derive(Clone, Copy)]
struct Script {
    stop_at: u64,
    power_cut: bool,
    full_at: u64,
    heal_at: u64,
}

async fn writer(
    store: Rc<KvStore>,
    disk: SimDisk,
    model: Rc<RefCell<Model>>,
    w: usize,
    script: Script,
) {
    let mut n = (w as u64) << 32;
    loop {
        n += 1;
        let (id, op_no) = {
            let mut m = model.borrow_mut();
            if m.stopped {
                return;
            }
            m.ops += 1;
            let op_no = m.ops;
            if op_no == script.stop_at {
                m.stopped = true;
                if script.power_cut {
                    m.cut = Some(disk.power_cut());
                }
                return;
            }
            (
                format!("w{w}-{}", disk.random(ITEMS_PER_WRITER as u64)),
                op_no,
            )
        };
        if op_no == script.full_at {
            disk.fill_up(disk.random(3000));
        }
        if op_no == script.heal_at {
            disk.heal();
        }
        let before = model.borrow().items.get(&id).cloned().unwrap_or_default();
        let allowed = before.allowed();
        // A read sees an allowed value, never a refused one.
        if disk.random(4) == 0 {
            // A read may be refused for a moment after a failure; what it serves is checked.
            if let Ok(got) = store.get("s", "g", &id).await.map(tree)
                && model.borrow().cut.is_none()
            {
                assert!(
                    allowed.contains(&got),
                    "{id}: read {got:?}, allowed {allowed:?}"
                );
            }
        }
        let kind = disk.random(10);
        let (result, candidates): (Answer, Vec<Option<Value>>) = if kind < 5 {
            let value = json!({"n": n, "pad": "x".repeat(disk.random(300) as usize)});
            let r = store
                .set("s", "g", &id, value.clone().into())
                .await
                .map(|s| tree(s.value));
            (r.map(|old| (old, Some(value.clone()))), vec![Some(value)])
        } else if kind < 8 {
            let r = store
                .update("s", "g", &id, &update_ops(n))
                .await
                .map(|s| s.value);
            let candidates = allowed.iter().map(|base| Some(updated(base, n))).collect();
            (
                r.map(|o| (tree(o.old_value), Some(o.new_value.to_value()))),
                candidates,
            )
        } else {
            let r = store.delete("s", "g", &id).await.map(|s| tree(s.value));
            (r.map(|old| (old, None)), vec![None])
        };
        if std::env::var_os("WAL_FAULT_SEED").is_some() {
            eprintln!(
                "{id} op {op_no} n {n}: {:?}",
                result.as_ref().map(|r| r.1.clone()).map_err(|e| e
                    .to_string()
                    .chars()
                    .take(60)
                    .collect::<String>())
            );
        }
        if record(&model, &id, result, candidates, &allowed) {
            // Refused while the disk fails: give the store a moment to probe it.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Checks a write's answer against the model and records it; true if it was refused.
fn record(
    model: &RefCell<Model>,
    id: &str,
    result: Answer,
    candidates: Vec<Option<Value>>,
    allowed: &[Option<Value>],
) -> bool {
    let mut m = model.borrow_mut();
    let cut = m.cut.is_some();
    let item = m.items.entry(id.to_owned()).or_default();
    match result {
        Ok((old, new)) if !cut => {
            assert!(
                allowed.contains(&old),
                "{id}: the write replaced {old:?}, allowed {allowed:?}"
            );
            if let Some(v) = &new {
                assert!(
                    candidates.contains(&Some(v.clone())),
                    "{id}: stored {v:?}, expected one of {candidates:?}"
                );
            }
            item.acked = new;
            item.maybe.clear();
            m.acked += 1;
        }
        // Answered after the cut: on the cut disk or not.
        Ok(_) => item.maybe.extend(candidates),
        Err(e) => match e.downcast_ref::<WriteError>() {
            Some(WriteError::NotStored(why)) if !cut => {
                if std::env::var_os("WAL_FAULT_SEED").is_some() {
                    eprintln!("{id}: refused: {why}");
                }
                item.refused.extend(candidates.into_iter().flatten());
                m.refused += 1;
                return true;
            }
            Some(_) => item.maybe.extend(candidates),
            None => panic!("{id}: an error that is not a WriteError: {e:#}"),
        },
    }
    false
}

/// Runs one case; returns a line about what it did.
fn run_case(seed: u64) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let dir = Path::new(DIR);
        let disk = SimDisk::new(seed);
        let store = Rc::new(KvStore::open_on(std::sync::Arc::new(disk.clone()), dir, options(&disk)).unwrap());
        let plan = plan_faults(&disk);
        if std::env::var_os("WAL_FAULT_SEED").is_some() {
            eprintln!("seed {seed}: faults {plan:?}");
        }
        let model = Rc::new(RefCell::new(Model::default()));
        let full_at = disk.random(400);
        let script = Script {
            stop_at: 20 + disk.random(300),
            power_cut: disk.random(5) != 0,
            full_at: if disk.random(4) == 0 { full_at } else { u64::MAX },
            heal_at: full_at + 1 + disk.random(60),
        };
        let writers = (0..WRITERS).map(|w| writer(store.clone(), disk.clone(), model.clone(), w, script));
        futures_util::future::join_all(writers).await;
        // Once the disk works again, the store takes writes again by itself.
        disk.heal();
        let healed = std::time::Instant::now();
        while let Err(e) = store.set("s", "g", "after-heal", json!(1).into()).await {
            assert!(healed.elapsed() < Duration::from_secs(5), "seed {seed}: no write resumed after the disk healed: {e:#}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (recovered_disk, how) = if !script.power_cut {
            store.shutdown().await.unwrap();
            (disk.clone(), "clean stop")
        } else {
            let cut = model.borrow_mut().cut.take().expect("the power was cut");
            store.shutdown().await.unwrap();
            (cut, "power cut")
        };
        drop(store);
        // A rewrite that failed or was cut short by the stop removed its file.
        assert!(
            !disk.exists_now(&dir.join(super::rewrite::TMP_NAME)),
            "seed {seed}: a rewrite's file was left on the disk"
        );
        let model = Rc::try_unwrap(model).ok().unwrap().into_inner();
        let log = dir.join(LOG_NAME);
        let mut flipped = None;
        if disk.random(4) == 0
            && let Some(data) = recovered_disk.contents(&log)
            && data.len() > 16
        {
            let byte = pick_flip(&data, &disk);
            recovered_disk.flip_bit(&log, byte, disk.random(8) as u8);
            flipped = Some(byte);
        }
        let line = format!(
            "seed {seed}: {how}, {} ops, {} acked, {} refused, faults {plan:?}, flipped {flipped:?}",
            model.ops, model.acked, model.refused
        );
        let reopened = KvStore::open_on(std::sync::Arc::new(recovered_disk.clone()), dir, options(&disk));
        let store = match reopened {
            Ok(store) => store,
            Err(e) => {
                let msg = format!("{e:#}");
                assert!(flipped.is_some(), "{line}: recovery refused without a flipped bit: {msg}");
                assert!(msg.contains("is damaged at byte") && msg.contains("streamhost store repair"), "{line}: {msg}");
                return format!("{line}: refused, damage named");
            }
        };
        assert!(!recovered_disk.exists_now(&dir.join(super::rewrite::TMP_NAME)), "{line}: a rewrite's file was left");
        for (id, item) in &model.items {
            let got = tree(store.get("s", "g", id).await.unwrap());
            let allowed = item.allowed();
            assert!(allowed.contains(&got), "{line}: {id} recovered as {got:?}, allowed {allowed:?}");
            if let Some(v) = &got {
                assert!(!item.refused.contains(v), "{line}: {id} recovered a refused write {v:?}");
            }
        }
        // The recovered store takes writes.
        store.set("s", "g", "after", json!(1).into()).await.unwrap();
        assert_eq!(tree(store.get("s", "g", "after").await.unwrap()), Some(json!(1)));
        store.shutdown().await.unwrap();
        line
    })
}

/// A byte of the log to flip: anywhere but the length field of the last record, whose
/// change (a longer length) cannot be told from a write cut short by a crash.
fn pick_flip(data: &[u8], disk: &SimDisk) -> usize {
    let mut last = 0;
    super::recovery::salvage(data, 0, |off, _| last = off);
    loop {
        let byte = disk.random(data.len() as u64) as usize;
        if !(last..last + 4).contains(&byte) {
            return byte;
        }
    }
}

#[test]
fn acknowledged_writes_survive_faults_and_power_cuts() {
    if let Some(seed) = std::env::var("WAL_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        println!("{}", run_case(seed));
        return;
    }
    let cases: u64 = std::env::var("WAL_FAULT_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let started = std::time::Instant::now();
    let (mut refused, mut damaged) = (0, 0);
    for seed in 0..cases {
        let line = std::panic::catch_unwind(|| run_case(seed)).unwrap_or_else(|_| {
            panic!("case {seed} failed; rerun it alone with WAL_FAULT_SEED={seed}")
        });
        refused += line.contains("refused, damage named") as u32;
        damaged += line.contains("flipped Some") as u32;
        if seed % 500 == 0 {
            println!("{line}");
        }
    }
    println!(
        "{cases} cases in {:.1} s: {damaged} with a flipped bit, {refused} of them refused at start",
        started.elapsed().as_secs_f64()
    );
}
