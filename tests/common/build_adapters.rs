//! Builds the WebAssembly adapters of `adapters/` for `wasm32-wasip2`; shared by the tests
//! and the `wasm` benchmark (which includes this file).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where adapters are built: beside the engine's own build when CI moves it out of the clone,
/// else in adapters/. Other adapter crates built here share its compiled dependencies.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir).join("adapters"),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("adapters/target"),
    }
}

/// Runs cargo on `adapters/` and returns the directory that holds the `.wasm` components.
pub fn build() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = target_dir();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(root.join("adapters/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .status()
        .expect("run cargo to build the adapters");
    assert!(
        status.success(),
        "building adapters/ for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`)"
    );
    target.join("wasm32-wasip2/release")
}
