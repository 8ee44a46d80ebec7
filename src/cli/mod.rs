//! The `streamhost` command line, declared with clap's derive: the types are the grammar and
//! their doc comments are the `--help` text, so the two cannot drift apart.
//!
//! `serve` is the default. Its options are accepted without the word too, so plain
//! `streamhost`, `streamhost --port 0` and `cargo run -- serve` all run the engine; options
//! before another subcommand are refused rather than silently ignored.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

pub mod new_adapter;

const LOGS: &str = "Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=streamhost=debug) for more.";

/// A realtime streams engine that speaks the iii stream protocol.
#[derive(Debug, Parser)]
#[command(
    name = "streamhost",
    version,
    after_help = LOGS,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Serve,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the engine (the default when no command is given)
    #[command(after_help = LOGS)]
    Serve(Serve),
    /// Write a new WebAssembly adapter, or check a built one
    #[command(subcommand)]
    Adapter(AdapterCommand),
    /// Look after a durable store whose log is damaged
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Debug, Default, Args)]
pub struct Serve {
    /// An iii config file; without one the engine listens on 3112 (clients) and 49134
    /// (workers) and keeps streams durably under ./data/stream_store
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The client socket's port, over the config's (0: any free port)
    #[arg(long, value_name = "N")]
    pub port: Option<u16>,
    /// The worker socket's port, over the config's (0: any free port)
    #[arg(long, value_name = "N")]
    pub worker_port: Option<u16>,
}

#[derive(Debug, Subcommand)]
pub enum AdapterCommand {
    /// Write a new adapter crate, ready to build, in DIR (default ./NAME)
    New {
        /// The crate's name: letters, digits, - and _, starting with a letter (e.g. my-adapter)
        name: String,
        /// Where to write it: a new or empty directory
        dir: Option<String>,
    },
    /// Check that a WebAssembly component implements wit/adapter.wit, and report what it
    /// imports and exports
    Check {
        #[arg(value_name = "FILE.wasm")]
        file: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Read a durable store's log (the KvStore's file_path) and report whether the engine can
    /// start on it, and any damage (exit status 1 when damaged)
    Check {
        /// The store's directory (the KvStore's file_path), e.g. ./data/stream_store
        dir: PathBuf,
    },
    /// Back the log up, then keep every intact record of a damaged log
    Repair {
        /// The store's directory (the KvStore's file_path), e.g. ./data/stream_store
        dir: PathBuf,
    },
}

impl Cli {
    /// What to run: `serve` stands for no command at all.
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Serve(self.serve))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        let args = std::iter::once("streamhost").chain(args.iter().copied());
        Cli::try_parse_from(args).map(Cli::into_command)
    }

    fn serve(args: &[&str]) -> Serve {
        match parse(args) {
            Ok(Command::Serve(s)) => s,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn the_grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_is_the_default_with_or_without_the_word() {
        let bare = serve(&[]);
        assert_eq!(
            (bare.config, bare.port, bare.worker_port),
            (None, None, None)
        );
        for args in [
            &["--config", "c.yaml", "--port", "0", "--worker-port", "7"][..],
            &["serve", "-c", "c.yaml", "--port", "0", "--worker-port", "7"],
        ] {
            let s = serve(args);
            assert_eq!(s.config, Some(PathBuf::from("c.yaml")), "{args:?}");
            assert_eq!((s.port, s.worker_port), (Some(0), Some(7)), "{args:?}");
        }
        // Options before another command would be ignored: they are refused.
        let err = parse(&["--port", "0", "store", "check", "d"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict, "{err}");
    }

    #[test]
    fn port_flags_take_a_port_number() {
        assert_eq!(serve(&["--port", "65535"]).port, Some(65535));
        let err = parse(&["--port", "65536"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ValueValidation, "{err}");
        assert!(err.to_string().contains("--port <N>"), "{err}");
        let err = parse(&["serve", "--worker-port"]).unwrap_err();
        assert!(err.to_string().contains("--worker-port <N>"), "{err}");
    }

    #[test]
    fn adapter_and_store_commands_take_their_operands() {
        assert!(matches!(
            parse(&["adapter", "new", "my-adapter"]),
            Ok(Command::Adapter(AdapterCommand::New { name, dir: None })) if name == "my-adapter"
        ));
        assert!(matches!(
            parse(&["adapter", "new", "a", "."]),
            Ok(Command::Adapter(AdapterCommand::New { dir: Some(d), .. })) if d == "."
        ));
        assert!(matches!(
            parse(&["adapter", "check", "x.wasm"]),
            Ok(Command::Adapter(AdapterCommand::Check { file })) if file == "x.wasm"
        ));
        assert!(matches!(
            parse(&["store", "repair", "d"]),
            Ok(Command::Store(StoreCommand::Repair { dir })) if dir == std::path::Path::new("d")
        ));
        for args in [
            &["adapter"][..],
            &["adapter", "check"],
            &["adapter", "new", "a", "b", "c"],
            &["store", "check"],
            &["store", "fix", "d"],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn help_and_version_say_what_each_command_does() {
        let help = Cli::command().render_long_help().to_string();
        for text in [
            "Usage: streamhost [OPTIONS]",
            "Run the engine (the default",
            "Write a new WebAssembly adapter",
            "keeps streams durably under ./data/stream_store",
            "RUST_LOG",
        ] {
            assert!(help.contains(text), "{text:?} not in:\n{help}");
        }
        let err = parse(&["--version"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DisplayVersion);
        assert_eq!(
            err.to_string().trim(),
            concat!("streamhost ", env!("CARGO_PKG_VERSION"))
        );
    }
}
