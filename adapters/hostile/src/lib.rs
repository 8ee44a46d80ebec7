//! hostile: a test fixture, not an example. It stores items like a well-behaved adapter,
//! except for a few item ids that make it misbehave, so that the tests can check that the
//! host contains each kind of failure and serves again afterwards:
//! - `loop`: spins forever (the per-call deadline must stop it);
//! - `memory`: allocates without end (the memory limit must stop it);
//! - `panic`: panics (a trap);
//! - `huge`: `get` returns 8 MiB (the boundary limit must refuse it).

wit_bindgen::generate!({ path: "../../wit", world: "adapter" });

use exports::streamhost::adapter::stream_adapter::Guest as StreamAdapter;
use streamhost::adapter::store;
use streamhost::adapter::types::{AdapterError, Json, UpdateOutcome};

struct Hostile;

fn misbehave(item: &str) {
    match item {
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "memory" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "panic" => panic!("the hostile adapter panics on purpose"),
        _ => {}
    }
}

impl StreamAdapter for Hostile {
    fn init(_config: Json) -> Result<(), AdapterError> {
        Ok(())
    }

    fn get(stream: String, group: String, item: String) -> Result<Option<Json>, AdapterError> {
        misbehave(&item);
        if item == "huge" {
            return Ok(Some(format!("\"{}\"", "x".repeat(8 << 20))));
        }
        store::get(&stream, &group, &item)
    }

    fn set(
        stream: String,
        group: String,
        item: String,
        data: Json,
    ) -> Result<Option<Json>, AdapterError> {
        misbehave(&item);
        store::set(&stream, &group, &item, &data)
    }

    fn delete(stream: String, group: String, item: String) -> Result<Option<Json>, AdapterError> {
        store::delete(&stream, &group, &item)
    }

    fn list_items(stream: String, group: String) -> Result<Vec<Json>, AdapterError> {
        store::list_items(&stream, &group)
    }

    fn list_groups(stream: String) -> Result<Vec<String>, AdapterError> {
        store::list_groups(&stream)
    }

    fn update(_: String, _: String, _: String, _: Json) -> Result<UpdateOutcome, AdapterError> {
        Err(AdapterError::Unsupported)
    }
}

export!(Hostile);
