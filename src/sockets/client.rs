//! The client socket (port 3112): browsers and apps subscribe to groups and items.
//!
//! A client is admitted to one tenant at the upgrade (`engine::admission`: the tenant its
//! token names, checked with that tenant's keys), then runs its tenant's `auth_function`, if
//! any, and holds only that tenant's space. A join outside the streams its token and its
//! tenant allow is answered `unauthorized`; when the token expires the socket is closed with
//! `CLOSE_TOKEN_EXPIRED`.
//!
//! `GET /stream/{stream}/{group}[/{item}]` subscribes at once; `GET /` waits for
//! `join`/`leave` frames. Every subscription is answered with a `sync` snapshot, then the
//! socket receives the group's (or item's) events through its outbox. A join that carries the
//! `offset` and `epoch` of the last event its client saw is answered, when the group's history
//! still holds what came after, with a `recovered` marker and exactly those events instead
//! (see `fanout::hub`); otherwise with a `sync` marked `"recovered":false`.
//!
//! Browsers cannot see WebSocket pings, so a socket opened with `?heartbeat=1` also gets a
//! `{"type":"heartbeat"}` text frame every ping interval.

use super::accept::ConnSlot;
use super::{credentials, http};
use crate::engine::Engine;
use crate::engine::admission::take_connection;
use crate::engine::space::{Kind, Space};
use crate::error::FnError;
use crate::fanout::frame::{EventKind, Position, StreamEvent, error_frame, now_millis};
use crate::fanout::history::recovered_frames;
use crate::fanout::hub::{ConnId, Joined};
use crate::fanout::outbox::{self, CLOSE_TOO_BIG, Flow, Keepalive, Outbox, Peer};
use crate::fanout::presence;
use crate::functions::admit;
use crate::json::Json;
use crate::storage::{Resumed, SharedHistory};
use crate::tenants::quotas::SlotPermit;
use crate::tenants::{ClientIdentity, QUOTA_EXCEEDED};
use axum::Router;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// The close code of a socket whose token expired: reconnect with a fresh one.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4401;

/// Bytes read from a socket at a time.
const READ_BUFFER: usize = 1024;
/// Bytes gathered before a write goes to the socket (a flush sends what is there sooner).
const WRITE_BUFFER: usize = 16 << 10;

pub fn routes(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/", any(root))
        .route("/stream/{stream}/{group}", any(group_path))
        .route("/stream/{stream}/{group}/{item}", any(item_path))
        .route("/metrics", get(http::metrics))
        .route("/health", get(http::health))
        .with_state(engine)
}

/// What a socket opened on a path subscribes to before it sends anything.
struct PathSub {
    stream: String,
    group: String,
    item: Option<String>,
}

/// The request as the auth function sees it.
struct Upgrade {
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    uri: Uri,
    query: Option<String>,
    addr: SocketAddr,
    /// The engine-wide connection slot, held while the socket lives.
    slot: Option<ConnSlot>,
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let ws = WebSocketUpgrade::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let ConnectInfo(addr) = ConnectInfo::<SocketAddr>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Upgrade {
            ws,
            headers: parts.headers.clone(),
            uri: parts.uri.clone(),
            query: parts.uri.query().map(str::to_owned),
            addr,
            slot: parts.extensions.get::<ConnSlot>().cloned(),
        })
    }
}

async fn root(State(engine): State<Arc<Engine>>, up: Upgrade) -> Response {
    accept(engine, up, None).await
}

async fn group_path(
    State(engine): State<Arc<Engine>>,
    Path((stream, group)): Path<(String, String)>,
    up: Upgrade,
) -> Response {
    let sub = PathSub {
        stream,
        group,
        item: None,
    };
    accept(engine, up, Some(sub)).await
}

async fn item_path(
    State(engine): State<Arc<Engine>>,
    Path((stream, group, item)): Path<(String, String, String)>,
    up: Upgrade,
) -> Response {
    let sub = PathSub {
        stream,
        group,
        item: Some(item),
    };
    accept(engine, up, Some(sub)).await
}

/// Admits the client to a tenant, runs that tenant's auth function, then upgrades with the
/// configured limits and echoed protocol.
async fn accept(engine: Arc<Engine>, req: Upgrade, path_sub: Option<PathSub>) -> Response {
    let token = credentials::subprotocol_token(&req.headers)
        .or_else(|| credentials::bearer(&req.headers))
        .or_else(|| credentials::query_param(req.query.as_deref(), "token"));
    let tenant = credentials::query_param(req.query.as_deref(), "tenant");
    let (identity, admitted) = match engine.admit_client(token.as_deref(), tenant.as_deref()) {
        Ok(admitted) => admitted,
        Err(e) => {
            tracing::debug!(addr = %req.addr, code = e.code.as_str(), "client refused: {}", e.message);
            return credentials::refusal(&e);
        }
    };
    let tenant_slot = match take_connection(&admitted.space) {
        Ok(permit) => permit,
        Err(e) => {
            tracing::debug!(addr = %req.addr, tenant = %admitted.tenant.id(), quota = e.quota, "client refused: {}", e.message);
            return credentials::quota_refusal(&e);
        }
    };
    let auth_function = admitted.tenant.config.clients.auth_function.clone();
    let (context, auth_user) =
        match authenticate(&admitted.space, auth_function.as_deref(), &req).await {
            Ok(authenticated) => authenticated,
            Err(refusal) => return refusal,
        };
    // Small buffers that grow on demand: most sockets are idle, and an idle socket should
    // cost a few kilobytes, not the 256 KiB of tungstenite's defaults.
    let mut ws = req
        .ws
        .max_message_size(engine.config.max_frame_bytes)
        .max_frame_size(engine.config.max_frame_bytes)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER);
    // Browsers send tokens as a subprotocol and drop the socket unless one is echoed: echo
    // the client's first choice (axum's own list is sorted, so read the header itself).
    let offered = credentials::offered_protocols(&req.headers).find(|p| !p.is_empty());
    if let Some(first) = offered.and_then(|p| HeaderValue::from_str(p).ok()) {
        ws.set_selected_protocol(first);
    }
    // A presence member's `user`: the token's `sub`, else what the auth function named.
    let user = match auth_user {
        Some(user) if identity.sub.is_empty() => user,
        _ => identity.sub.clone(),
    };
    let admitted = Admission {
        space: admitted.space,
        identity,
        user,
        context,
        addr: req.addr,
        _slots: (req.slot, tenant_slot),
    };
    let heartbeat =
        credentials::query_param(req.query.as_deref(), "heartbeat").as_deref() == Some("1");
    ws.on_upgrade(move |socket| serve(engine, socket, admitted, path_sub, heartbeat))
        .into_response()
}

/// Who a client is, once admitted.
struct Admission {
    space: Arc<Space>,
    identity: ClientIdentity,
    /// Who the client is to other presence members ("" for nobody).
    user: String,
    /// What the auth function returned as `context`.
    context: Value,
    addr: SocketAddr,
    /// The engine's and the tenant's connection slots, given back when the socket goes.
    _slots: (Option<ConnSlot>, SlotPermit),
}

/// Runs the auth function: the `context` it returned, and the `user` it named, if any.
async fn authenticate(
    space: &Space,
    auth_function: Option<&str>,
    req: &Upgrade,
) -> Result<(Value, Option<String>), Response> {
    let Some(auth) = auth_function else {
        return Ok((Value::Null, None));
    };
    let headers: serde_json::Map<String, Value> = req
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    let mut query_params: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in form_urlencoded::parse(req.query.as_deref().unwrap_or("").as_bytes()) {
        query_params
            .entry(k.into_owned())
            .or_default()
            .push(v.into_owned());
    }
    let payload = json!({"headers": headers, "path": req.uri.path(), "query_params": query_params, "addr": req.addr.to_string()});
    let answer = space.functions.call(auth, payload).await;
    match answer.map(|result| result.map(|r| r.to_value())) {
        Ok(Some(result)) if result.get("allowed") == Some(&Value::Bool(false)) => {
            let reason = result
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("refused by the auth function");
            Err((StatusCode::FORBIDDEN, format!("forbidden: {reason}\n")).into_response())
        }
        Ok(result) => {
            let result = result.unwrap_or(Value::Null);
            let user = presence::user_from_auth(&result).unwrap_or_else(|e| {
                tracing::warn!(function = auth, "{e}; the client's presence `user` is null");
                None
            });
            let context = result.get("context").cloned().unwrap_or(Value::Null);
            Ok((context, user))
        }
        Err(e) => {
            tracing::info!(addr = %req.addr, error = %e, "auth function refused a client");
            Err((StatusCode::UNAUTHORIZED, format!("unauthorized: {e}\n")).into_response())
        }
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "lowercase")]
enum ClientFrame {
    Join(JoinData),
    Leave(JoinData),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JoinData {
    subscription_id: String,
    stream_name: String,
    group_id: String,
    #[serde(default)]
    id: Option<String>,
    /// The offset and epoch of the last event the client saw, to resume from: both or neither.
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    epoch: Option<String>,
    /// Asks for the group's presence frames (`fanout::presence`).
    #[serde(default)]
    presence: bool,
    /// What other members see of this one, on a stream that keeps presence.
    #[serde(default)]
    info: Option<Value>,
}

impl JoinData {
    /// Where the join resumes from; an error when only one of `offset` and `epoch` is given.
    fn resume(&self) -> Result<Option<Position>, &'static str> {
        match (self.offset, &self.epoch) {
            (None, None) => Ok(None),
            (Some(offset), Some(epoch)) => Ok(Some(Position {
                offset,
                epoch: epoch.as_str().into(),
            })),
            _ => Err(
                "a join resumes with both `offset` and `epoch` (from the last event it saw), or sends neither",
            ),
        }
    }
}

/// One client connection: its subscriptions and the context its auth function returned.
struct Client {
    engine: Arc<Engine>,
    /// The client's tenant's share of the engine: all it can reach.
    space: Arc<Space>,
    identity: ClientIdentity,
    /// Its presence member's `user` ("" for null).
    user: String,
    conn: ConnId,
    outbox: Arc<Outbox>,
    context: Value,
    subs: HashMap<String, JoinData>,
}

async fn serve(
    engine: Arc<Engine>,
    socket: WebSocket,
    admitted: Admission,
    path_sub: Option<PathSub>,
    heartbeat: bool,
) {
    let Admission {
        space,
        identity,
        user,
        context,
        addr,
        _slots,
    } = admitted;
    let _open = engine.metrics.connections.client_opened();
    let (outbox, rx) = Outbox::bounded(
        engine.config.send_queue_frames,
        engine.config.send_queue_bytes,
        engine.metrics.connections.closes(),
    );
    outbox.take_turns(&space.fanout_turns, &space.fanout_pace);
    let _listed = engine.list_socket(
        &space,
        Kind::Client,
        Some(addr),
        &identity.sub,
        None,
        &outbox,
    );
    let _expiry = identity.exp.map(|exp| close_at_expiry(exp, outbox.clone()));
    let _heartbeat = heartbeat
        .then(|| send_heartbeats(engine.config.client_timeouts.ping_interval, outbox.clone()));
    let mut client = Client {
        conn: space.hub.next_conn_id(),
        engine: engine.clone(),
        space,
        identity,
        user,
        outbox: outbox.clone(),
        context,
        subs: HashMap::new(),
    };
    if let Some(p) = path_sub {
        Box::pin(client.join(JoinData {
            subscription_id: "path".into(),
            stream_name: p.stream,
            group_id: p.group,
            id: p.item,
            offset: None,
            epoch: None,
            presence: false,
            info: None,
        }))
        .await;
    }
    outbox::drive(
        socket,
        rx,
        outbox,
        engine.shutdown_signal(),
        engine.config.close_grace,
        keepalive(&engine.config.client_timeouts),
        &mut client,
    )
    .await;
    client.leave_all();
}

/// A client frame's refusal for a quota: `quota_exceeded`, what to fix, and `retry_after_ms`
/// when waiting would help.
fn quota_frame(e: &FnError) -> Utf8Bytes {
    let mut error = json!({"code": QUOTA_EXCEEDED, "message": e.message});
    if let Some(ms) = e.retry_after_ms {
        error["retry_after_ms"] = ms.into();
    }
    Utf8Bytes::from(json!({"type": "error", "error": error}).to_string())
}

/// How a socket of these timeouts pings and gives up on its peer.
pub fn keepalive(t: &crate::config::SocketTimeouts) -> Keepalive {
    Keepalive {
        ping_interval: t.ping_interval,
        idle_timeout: t.idle_timeout,
    }
}

/// Closes the socket when its token expires; dropping the returned guard cancels that.
fn close_at_expiry(exp: u64, outbox: Arc<Outbox>) -> AbortOnDrop {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let left = std::time::Duration::from_secs(exp.saturating_sub(now));
    AbortOnDrop(tokio::spawn(async move {
        tokio::time::sleep(left).await;
        outbox.close(
            CLOSE_TOKEN_EXPIRED,
            "the token expired: reconnect with a fresh token",
        );
    }))
}

/// Queues a `{"type":"heartbeat"}` frame every `every`, so that a page sees the server is
/// alive; dropping the returned guard stops it.
fn send_heartbeats(every: std::time::Duration, outbox: Arc<Outbox>) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let frame = json!({"type": "heartbeat", "timestamp": now_millis()}).to_string();
            if !outbox.push(Utf8Bytes::from(frame)) {
                return;
            }
        }
    }))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Peer for Client {
    async fn on_message(&mut self, msg: Result<Message, axum::Error>) -> Flow {
        match msg {
            // Boxed: a join's future is large, and an idle socket should not carry it.
            Ok(Message::Text(text)) => Box::pin(self.frame(text.as_bytes())).await,
            Ok(Message::Binary(bytes)) => Box::pin(self.frame(&bytes)).await,
            Ok(_) => {} // pings are answered by the socket itself
            Err(e) => {
                match outbox::read_error_close(&e) {
                    Some((code, detail)) => {
                        let reason = if code == CLOSE_TOO_BIG {
                            format!("{detail} (max_frame_bytes)")
                        } else {
                            detail
                        };
                        tracing::debug!(code, %reason, "closing a client socket");
                        self.outbox.close(code, reason);
                    }
                    None => tracing::debug!(error = %e, "client socket error"),
                }
                return Flow::Stop;
            }
        }
        Flow::Continue
    }
}

impl Client {
    async fn frame(&mut self, bytes: &[u8]) {
        let frame: ClientFrame = match serde_json::from_slice(bytes) {
            Ok(f) => f,
            Err(e) => {
                let hint = "expected {\"type\":\"join\"|\"leave\",\"data\":{\"subscriptionId\",\"streamName\",\"groupId\",\"id\"?}}";
                self.outbox.push(Utf8Bytes::from(error_frame(
                    "invalid_frame",
                    &format!("{e}; {hint}"),
                )));
                return;
            }
        };
        match frame {
            ClientFrame::Join(data) => self.join(data).await,
            ClientFrame::Leave(data) => self.leave(&data.subscription_id),
        }
    }

    fn trigger_payload(&self, sub: &JoinData) -> Value {
        json!({
            "subscription_id": sub.subscription_id,
            "stream_name": sub.stream_name,
            "group_id": sub.group_id,
            "id": sub.id,
            "context": self.context,
        })
    }

    async fn join(&mut self, sub: JoinData) {
        let engine = self.engine.clone();
        let limit = engine.config.max_subscriptions;
        if self.subs.len() >= limit && !self.subs.contains_key(&sub.subscription_id) {
            let message = format!(
                "this socket already holds {limit} subscriptions (max_subscriptions); leave one first"
            );
            self.outbox.push(Utf8Bytes::from(error_frame(
                "too_many_subscriptions",
                &message,
            )));
            return;
        }
        let quotas = self.space.quotas();
        let quota = quotas.subscriptions_per_connection();
        if self.subs.len() as u64 >= quota && !self.subs.contains_key(&sub.subscription_id) {
            let what = format!(
                "this socket already holds {} subscriptions, the tenant's limit; leave one first",
                self.subs.len()
            );
            let e = quotas.over("subscriptions_per_connection", what);
            self.outbox.push(quota_frame(&e.into()));
            return;
        }
        let resume = match sub.resume() {
            Ok(resume) => resume,
            Err(message) => {
                self.outbox
                    .push(Utf8Bytes::from(error_frame("invalid_frame", message)));
                return;
            }
        };
        let space = self.space.clone();
        let rules = space.hub.presence_rules();
        let info = sub.info.as_ref();
        if let Err((code, message)) =
            presence::check_join(&rules, &sub.stream_name, sub.presence, info)
        {
            self.outbox
                .push(Utf8Bytes::from(error_frame(code, &message)));
            return;
        }
        if !self.may_join(&sub.stream_name)
            || space.functions.triggers.has_join_triggers()
                && space
                    .functions
                    .triggers
                    .join_rejected(&space.functions, &self.trigger_payload(&sub))
                    .await
        {
            let event = StreamEvent::new(
                &sub.stream_name,
                &sub.group_id,
                sub.id.as_deref(),
                EventKind::Unauthorized,
            );
            self.outbox.push(Utf8Bytes::from(event.encode()));
            return;
        }
        // Last, so that only a join about to be made spends the tenant's deliveries.
        let (stream, group) = (&sub.stream_name, &sub.group_id);
        let charged =
            admit::presence_join(&space.functions, stream, group, self.conn, sub.presence);
        if let Err(e) = charged {
            self.outbox.push(quota_frame(&e));
            return;
        }
        // A join that replaces a subscription of the same group is replaced in place by the
        // hub (by id), so its presence does not flicker out and back in.
        let moved =
            |old: &JoinData| (&old.stream_name, &old.group_id) != (&sub.stream_name, &sub.group_id);
        if let Some(old) = self.subs.remove(&sub.subscription_id).filter(moved) {
            space.hub.unsubscribe(
                &old.stream_name,
                &old.group_id,
                self.conn,
                &old.subscription_id,
            );
        }
        // Over shared rosters (Redis), the socket becomes a member there first: a join that
        // cannot be made there is refused before anything is subscribed.
        let (sub_id, who) = (&sub.subscription_id, &self.user);
        let member = |client: &str| presence::member(client, who, sub.info.clone());
        let due = match space
            .hub
            .join_shared(stream, group, self.conn, member)
            .await
        {
            Ok(due) => due,
            Err(e) => {
                let message = format!(
                    "cannot add this socket to the presence roster of {stream}/{group}: {e:#}; join again once the store answers"
                );
                self.outbox.push(Utf8Bytes::from(error_frame(
                    "presence_unavailable",
                    &message,
                )));
                return;
            }
        };
        // Subscribe first, then read; the hub holds this group's frames for the socket until
        // the `sync` is queued, so an event racing the snapshot never goes before it. A join
        // that resumes within the group's history is answered from it instead. Over a shared
        // history (Redis), that is this node's copy of it; a join it does not cover resumes
        // from the shared history itself, on any node.
        let shared = space.store().event_bus().and_then(|b| b.shared_history());
        let joined = space.hub.subscribe(
            &sub.stream_name,
            &sub.group_id,
            self.conn,
            &self.outbox,
            &sub.subscription_id,
            sub.id.as_deref(),
            resume.as_ref(),
        );
        if space.hub.shared_presence().is_some() {
            let hub = &space.hub;
            hub.watch_shared(stream, group, self.conn, sub_id, sub.presence, due);
        } else {
            let member = |client: &str| presence::member(client, who, sub.info.clone());
            let hub = &space.hub;
            hub.present(stream, group, self.conn, sub_id, sub.presence, member);
        }
        match (joined, shared) {
            (Joined::Held(held), Some(shared)) => {
                self.resume_shared(&sub, &*shared, held, resume).await
            }
            (Joined::Held(position), None) => self.sync(&sub, position, resume.is_some()).await,
            (Joined::Recovered, _) => {}
        }
        self.subs.insert(sub.subscription_id.clone(), sub);
    }

    /// Answers a held join from the shared history: the missed events when it holds them all,
    /// else a `sync` at the history's position (at the hub's, `held`, when it cannot be read).
    /// Held frames already covered are not sent again.
    async fn resume_shared(
        &self,
        sub: &JoinData,
        shared: &dyn SharedHistory,
        held: Position,
        resume: Option<Position>,
    ) {
        let (stream, group) = (&sub.stream_name, &sub.group_id);
        match (shared.resume(stream, group, resume.as_ref()).await, resume) {
            (Ok(Resumed::Recovered { frames, last }), Some(from)) => {
                let item = sub.id.as_deref();
                let first = recovered_frames(stream, group, item, &from, frames);
                let (conn, outbox) = (self.conn, &self.outbox);
                let hub = &self.space.hub;
                hub.release_after(stream, group, conn, outbox, first, Some(&last));
            }
            (Ok(Resumed::Sync(at)), resume) => self.sync(sub, at, resume.is_some()).await,
            (Ok(Resumed::Recovered { last, .. }), None) => self.sync(sub, last, false).await,
            (Err(e), resume) => {
                tracing::warn!(stream, group, error = %format!("{e:#}"), "cannot read the shared history; the join gets a sync at this node's position");
                self.sync(sub, held, resume.is_some()).await
            }
        }
    }

    /// Reads the snapshot of a held subscription and queues its `sync` at `position` (marked
    /// `"recovered":false` when the join asked to resume), then what was held for it.
    async fn sync(&self, sub: &JoinData, position: Position, resuming: bool) {
        let space = &self.space;
        let snapshot = match &sub.id {
            Some(item) => space.functions.call("stream::get", json!({"stream_name": sub.stream_name, "group_id": sub.group_id, "item_id": item})).await,
            None => space.functions.call("stream::list", json!({"stream_name": sub.stream_name, "group_id": sub.group_id})).await,
        };
        let first = match snapshot {
            Ok(data) => {
                let data = data.unwrap_or_else(|| match sub.id {
                    Some(_) => Json::null(),
                    None => Json::array(&[]),
                });
                let event = StreamEvent::new(
                    &sub.stream_name,
                    &sub.group_id,
                    sub.id.as_deref(),
                    EventKind::Sync(data),
                );
                event.encode_at(&position, resuming.then_some(false))
            }
            Err(e) => error_frame(
                "sync_failed",
                &format!("snapshot of {}/{}: {e}", sub.stream_name, sub.group_id),
            ),
        };
        space.hub.release_after(
            &sub.stream_name,
            &sub.group_id,
            self.conn,
            &self.outbox,
            vec![Utf8Bytes::from(first)],
            Some(&position),
        );
    }

    /// Whether the client's token and its tenant, as the tenant is configured now, let it
    /// join `stream`. A tenant that is gone or disabled lets nothing through.
    fn may_join(&self, stream: &str) -> bool {
        self.engine
            .tenants
            .get(self.space.tenant.as_str())
            .is_some_and(|t| t.enabled() && self.identity.may_join(&t.config, stream))
    }

    fn leave(&mut self, subscription_id: &str) {
        if let Some(sub) = self.subs.remove(subscription_id) {
            self.space.hub.unsubscribe(
                &sub.stream_name,
                &sub.group_id,
                self.conn,
                &sub.subscription_id,
            );
            self.space
                .functions
                .triggers
                .fire_leave(&self.space.functions, self.trigger_payload(&sub));
        }
    }

    fn leave_all(&mut self) {
        let ids: Vec<String> = self.subs.keys().cloned().collect();
        for id in ids {
            self.leave(&id);
        }
    }
}
