//! Starting and stopping the engine: the two listeners, the adapter, graceful shutdown.

use crate::config::AdapterConfig;
use crate::config::Config;
use crate::engine::Engine;
use crate::sockets::client;
use crate::sockets::worker;
use crate::storage::StreamAdapter;
use crate::storage::kv_store::KvStore;
use crate::storage::redis::RedisAdapter;
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub struct Server;

/// A running engine: its bound addresses, and the means to stop it.
pub struct ServerHandle {
    pub client_addr: SocketAddr,
    pub worker_addr: SocketAddr,
    pub engine: Arc<Engine>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Opens the store, binds both sockets and starts serving.
    pub async fn start(config: Config) -> anyhow::Result<ServerHandle> {
        raise_open_files_limit();
        for warning in &config.warnings {
            tracing::warn!("config: {warning}");
        }
        let adapter = open_store(&config.adapter).await?;
        let client_listener = bind(&config.host, config.port, "client").await?;
        let worker_listener = bind(&config.worker_host, config.worker_port, "worker").await?;
        let client_addr = client_listener.local_addr()?;
        let worker_addr = worker_listener.local_addr()?;
        let custom = config.custom_streams.clone();
        let engine = Engine::new(config, adapter);
        engine.listen_to_bus();
        for stream in custom {
            let wasm = std::fs::read(&stream.component).with_context(|| {
                format!(
                    "cannot read the component {} for stream {}",
                    stream.component.display(),
                    stream.stream_name
                )
            })?;
            engine
                .functions
                .storage
                .bind_wasm(
                    &stream.stream_name,
                    &wasm,
                    stream.config,
                    stream.limits,
                    engine.config.value_limits,
                )
                .await
                .with_context(|| {
                    format!(
                        "cannot bind stream {} to {}",
                        stream.stream_name,
                        stream.component.display()
                    )
                })?;
        }

        let clients =
            client::routes(engine.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let workers = worker::routes(engine.clone()).into_make_service();
        let stop = engine.shutdown_signal();
        let client_task = tokio::spawn(async move {
            if let Err(e) = axum::serve(client_listener, clients)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!(error = %e, "client socket stopped");
            }
        });
        let stop = engine.shutdown_signal();
        let worker_task = tokio::spawn(async move {
            if let Err(e) = axum::serve(worker_listener, workers)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!(error = %e, "worker socket stopped");
            }
        });
        tracing::info!(%client_addr, %worker_addr, adapter = engine.store().name(), "streamhost is serving");
        Ok(ServerHandle {
            client_addr,
            worker_addr,
            engine,
            tasks: vec![client_task, worker_task],
        })
    }
}

/// Every client is a socket: raises the soft open-files limit to the hard one, so that a
/// process holds thousands of sockets without `ulimit -n` first.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open-files limit"),
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-files limit; `ulimit -n` caps the number of clients")
        }
    }
}

async fn bind(host: &str, port: u16, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind((host, port))
        .await
        .with_context(|| format!("cannot listen for {what}s on {host}:{port}; is another engine running there? Set the {what} port in the config"))
}

impl ServerHandle {
    /// Closes every socket (1001, going away), stops the listeners and syncs the store.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.engine.begin_shutdown();
        for task in self.tasks {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        }
        let adapter = self.engine.store().clone();
        tokio::task::spawn_blocking(move || {
            futures_util::FutureExt::now_or_never(adapter.shutdown())
        })
        .await
        .context("store shutdown")?;
        Ok(())
    }
}

/// Opens the store the configuration names: the engine's own adapter.
async fn open_store(config: &AdapterConfig) -> anyhow::Result<Arc<dyn StreamAdapter>> {
    Ok(match config {
        AdapterConfig::KvMemory => Arc::new(KvStore::in_memory()),
        AdapterConfig::KvFile { path } => Arc::new(KvStore::open(path)?),
        AdapterConfig::Redis { url } => Arc::new(RedisAdapter::connect(url).await?),
    })
}
