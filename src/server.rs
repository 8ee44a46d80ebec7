//! Starting and stopping the engine: the two listeners (and the admin API's, when
//! configured), the adapter, graceful shutdown.

use crate::config::Config;
use crate::engine::Engine;
use crate::engine::stores::Stores;
use crate::sockets::worker;
use crate::sockets::{accept, client};
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
    /// The admin API's address, when `admin:` is configured.
    pub admin_addr: Option<SocketAddr>,
    pub engine: Arc<Engine>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Opens the store, binds both sockets and starts serving.
    pub async fn start(config: Config) -> anyhow::Result<ServerHandle> {
        let nofile = raise_open_files_limit();
        for warning in &config.warnings {
            tracing::warn!("config: {warning}");
        }
        let (adapter, stores) = Stores::open_default(&config.adapter).await?;
        let custom = config.custom_streams.clone();
        let engine = Engine::new(config, adapter, stores)?;
        // Before anything is served: stored bytes count what the stores already hold.
        for space in engine.spaces() {
            space.load_stored_bytes().await;
        }
        let config = &engine.config;
        let client_listener = bind(&config.host, config.port, "client").await?;
        let worker_host = worker_host(&engine);
        let worker_listener = bind(worker_host, config.worker_port, "worker").await?;
        let client_addr = client_listener.local_addr()?;
        let worker_addr = worker_listener.local_addr()?;
        let default = engine.default_space();
        for stream in custom {
            let wasm = std::fs::read(&stream.component).with_context(|| {
                format!(
                    "cannot read the component {} for stream {}",
                    stream.component.display(),
                    stream.stream_name
                )
            })?;
            default
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

        let connections = accept::Connections::new(max_connections(&engine.config, nofile));
        let clients = accept::Port {
            name: "client",
            router: client::routes(engine.clone()),
            handshake_timeout: engine.config.client_timeouts.handshake,
            connections: connections.clone(),
        };
        let workers = accept::Port {
            name: "worker",
            router: worker::routes(engine.clone()),
            handshake_timeout: engine.config.worker_timeouts.handshake,
            connections: connections.clone(),
        };
        let client_task = tokio::spawn(accept::serve(client_listener, clients, engine.clone()));
        let worker_task = tokio::spawn(accept::serve(worker_listener, workers, engine.clone()));
        let mut tasks = vec![client_task, worker_task];
        let admin_addr = match &engine.config.admin {
            Some(admin) => {
                let (addr, task) = serve_admin(&engine, admin).await?;
                tasks.push(task);
                Some(addr)
            }
            None => None,
        };
        tracing::info!(%client_addr, %worker_addr, adapter = engine.store().name(), max_connections = connections.max(), "streamhost is serving");
        Ok(ServerHandle {
            client_addr,
            worker_addr,
            admin_addr,
            engine,
            tasks,
        })
    }
}

/// Binds the admin API's listener and serves it until shutdown.
async fn serve_admin(
    engine: &Arc<Engine>,
    admin: &crate::admin::AdminConfig,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind((admin.host.as_str(), admin.port))
        .await
        .with_context(|| {
            format!(
                "cannot listen for the admin API on {}:{}; is another engine running there? Set `admin.port` in the config",
                admin.host, admin.port
            )
        })?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the admin API listens beyond this machine over plain HTTP: the operator key crosses the network in clear unless a TLS proxy fronts it");
    }
    let app = crate::admin::routes(engine.clone(), &admin.key_sha256);
    let stop = engine.shutdown_signal();
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "admin API stopped");
        }
    });
    tracing::info!(%addr, "admin API is serving");
    Ok((addr, task))
}

/// Where the worker socket listens. Without any worker key, a worker is trusted with
/// everything the `default` tenant holds, so the socket stays on this machine unless the
/// config says `allow_anonymous_workers: true`.
fn worker_host(engine: &Engine) -> &str {
    let host = engine.config.worker_host.as_str();
    let loopback = host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
        || host == "localhost";
    if engine.tenants.has_worker_keys() || loopback {
        return host;
    }
    if engine.config.allow_anonymous_workers {
        tracing::warn!(
            host,
            "the worker socket accepts workers without a key from any address (allow_anonymous_workers: true): anyone who reaches it can read and change every stream of the default tenant"
        );
        return host;
    }
    tracing::warn!(
        configured = host,
        "no worker keys are configured, so the worker socket listens on 127.0.0.1 only; give a tenant a worker key (see \"Hosting tenants\" in the README), or set allow_anonymous_workers: true to listen on {host}"
    );
    "127.0.0.1"
}

/// Every client is a socket: raises the soft open-files limit to the hard one, so that a
/// process holds thousands of sockets without `ulimit -n` first. Returns the limit, if known.
fn raise_open_files_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            tracing::debug!(limit, "open-files limit");
            Some(limit)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-files limit; `ulimit -n` caps the number of clients");
            None
        }
    }
}

/// The engine-wide connection cap: `max_connections`, else 90% of the open-files limit, so
/// that the store, the adapters' files and the admin API always find a descriptor.
fn max_connections(config: &Config, nofile: Option<u64>) -> usize {
    let safe = nofile.map(|n| (n / 10 * 9).max(64) as usize);
    match (config.max_connections, safe) {
        (Some(max), Some(safe)) if max > safe => {
            tracing::warn!(
                max_connections = max,
                open_files_limit = nofile,
                "max_connections is above 90% of the open-files limit: past it, new connections fail to accept rather than get a 429; raise `ulimit -n`"
            );
            max
        }
        (Some(max), _) => max,
        (None, Some(safe)) => safe,
        (None, None) => 10_000,
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
        for space in self.engine.spaces() {
            // Members of shared rosters leave now rather than after this node's ttl.
            let within = self
                .engine
                .config
                .close_grace
                .min(std::time::Duration::from_secs(3));
            space.leave_shared_rosters(within).await;
            let adapter = space.store().clone();
            tokio::task::spawn_blocking(move || {
                futures_util::FutureExt::now_or_never(adapter.shutdown())
            })
            .await
            .context("store shutdown")?;
        }
        Ok(())
    }
}
