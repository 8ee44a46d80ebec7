//! `streamhost adapter new NAME [DIR]`: writes a standalone adapter crate that builds anywhere.
//!
//! Part of the `streamhost` binary, not of the library. Everything it writes is taken from
//! this repository at compile time, so a new adapter cannot drift from the one the tests
//! build: the WIT file, the template's code (with its `../../wit` path pointed at the copy),
//! and, from `adapters/Cargo.toml`, the edition, the dependencies, the release profile and the
//! lock file.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};

const WIT: &str = include_str!("../../wit/adapter.wit");
const TEMPLATE: &str = include_str!("../../adapters/template/src/lib.rs");
const WORKSPACE: &str = include_str!("../../adapters/Cargo.toml");
const LOCK: &str = include_str!("../../adapters/Cargo.lock");

/// Creates the crate in `dir` (default `./NAME`); returns the directory.
pub fn create(name: &str, dir: Option<&str>) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let dir = PathBuf::from(dir.unwrap_or(name));
    refuse_non_empty(&dir)?;
    let files = [
        ("Cargo.toml", cargo_toml(name)?),
        ("Cargo.lock", LOCK.to_owned()),
        (".gitignore", "/target\n/data\n".to_owned()),
        ("wit/adapter.wit", WIT.to_owned()),
        ("src/lib.rs", lib_rs(name)?),
    ];
    for (path, text) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap())
            .with_context(|| format!("cannot create {}", path.parent().unwrap().display()))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(dir)
}

/// The `.wasm` file that `cargo build --release --target wasm32-wasip2` makes of `name`.
pub fn wasm_file(name: &str) -> String {
    format!(
        "target/wasm32-wasip2/release/{}.wasm",
        name.replace('-', "_")
    )
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.len() <= 64;
    if !ok {
        bail!(
            "{name:?} cannot name a crate: use letters, digits, `-` and `_`, starting with a letter (e.g. my-adapter)"
        );
    }
    Ok(())
}

fn refuse_non_empty(dir: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} already exists and is not empty; choose another directory (streamhost adapter new NAME DIR) or remove it",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            bail!(
                "{} exists and is a file; choose another directory",
                dir.display()
            )
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", dir.display())),
    }
}

/// The crate's manifest: the workspace's edition, dependencies and release profile, and an
/// empty `[workspace]` so that it builds on its own even inside another workspace.
fn cargo_toml(name: &str) -> anyhow::Result<String> {
    let edition = section(WORKSPACE, "workspace.package")
        .lines()
        .find(|l| l.starts_with("edition"))
        .context("adapters/Cargo.toml has no edition")?;
    let dependencies = section(WORKSPACE, "workspace.dependencies");
    let profile = section(WORKSPACE, "profile.release");
    if dependencies.is_empty() || profile.is_empty() {
        bail!("adapters/Cargo.toml lacks [workspace.dependencies] or [profile.release]");
    }
    Ok(format!(
        "# A streamhost stream adapter. Build it with:\n\
         #   cargo build --release --target wasm32-wasip2\n\
         # and bind {wasm}.\n\
         [package]\nname = \"{name}\"\nversion = \"0.1.0\"\n{edition}\n\n\
         [lib]\ncrate-type = [\"cdylib\"]\n\n\
         [dependencies]\n{dependencies}\n\n\
         [profile.release]\n{profile}\n\n\
         # Not part of any enclosing workspace.\n[workspace]\n",
        wasm = wasm_file(name),
        dependencies = dependencies.trim_end(),
        profile = profile.trim_end(),
    ))
}

/// The lines of one `[table]` of a TOML file, up to the next table.
fn section<'a>(toml: &'a str, table: &str) -> &'a str {
    let header = format!("[{table}]\n");
    let Some(start) = toml.find(&header).map(|i| i + header.len()) else {
        return "";
    };
    let rest = &toml[start..];
    let end = rest.find("\n[").map(|i| i + 1).unwrap_or(rest.len());
    &rest[..end]
}

/// The template's code under a header of its own, its WIT path pointed at the copy.
fn lib_rs(name: &str) -> anyhow::Result<String> {
    let from = r#"path: "../../wit""#;
    let body = TEMPLATE
        .find("\n\n")
        .filter(|_| TEMPLATE.starts_with("//!"))
        .map(|end| &TEMPLATE[end + 2..])
        .context("adapters/template/src/lib.rs should start with a //! header")?;
    if !body.contains(from) {
        bail!(
            "adapters/template/src/lib.rs no longer contains {from:?}; update src/cli/new_adapter.rs"
        );
    }
    let header = format!(
        "//! {name}: a streamhost stream adapter, made by `streamhost adapter new` from the\n\
         //! template. It keeps items in the store the host lends it, unchanged, so it behaves\n\
         //! exactly like a native stream; put your own logic in the function you need.\n\
         //!\n\
         //! Build:  cargo build --release --target wasm32-wasip2\n\
         //! Check:  streamhost adapter check {wasm}\n\n",
        wasm = wasm_file(name)
    );
    Ok(header + &body.replace(from, r#"path: "wit""#))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_carries_the_workspace_settings() {
        let toml = cargo_toml("my-adapter").unwrap();
        for line in [
            "name = \"my-adapter\"",
            "edition = \"2024\"",
            "crate-type = [\"cdylib\"]",
            "panic = \"abort\"",
            "[workspace]",
        ] {
            assert!(toml.contains(line), "{line} missing from\n{toml}");
        }
        let wit_bindgen = WORKSPACE
            .lines()
            .find(|l| l.starts_with("wit-bindgen"))
            .unwrap();
        assert!(toml.contains(wit_bindgen), "{toml}");
        assert!(!toml.contains(".workspace"), "{toml}");
    }

    #[test]
    fn the_code_points_at_its_own_wit() {
        let code = lib_rs("my-adapter").unwrap();
        assert!(code.contains(r#"path: "wit""#));
        assert!(!code.contains("../"), "{code}");
        assert!(!code.contains("adapters/target"), "{code}");
        assert!(code.starts_with("//! my-adapter: "), "{code}");
        assert!(code.contains("target/wasm32-wasip2/release/my_adapter.wasm"));
    }

    #[test]
    fn names_and_directories_are_checked() {
        for bad in ["", "1abc", "my adapter", "a/b", "../x", "é"] {
            let err = check_name(bad).unwrap_err().to_string();
            assert!(err.contains("cannot name a crate"), "{err}");
        }
        check_name("my-adapter_2").unwrap();

        let dir = tempfile::tempdir().unwrap();
        refuse_non_empty(dir.path()).unwrap();
        std::fs::write(dir.path().join("x"), "").unwrap();
        let err = refuse_non_empty(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not empty"), "{err}");
        let err = refuse_non_empty(&dir.path().join("x"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is a file"), "{err}");
    }
}
