#!/usr/bin/env bash
# Starts the chat example: streamhost (in-memory store) and the chat's worker and page server.
# Then open http://127.0.0.1:8080/ (or #room-name after it) in two browser windows.
#   PORT=8080 STREAM_PORT=3112 WORKER_PORT=49134 examples/chat/run.sh
# STREAMHOST_BIN=/path/to/streamhost uses that binary instead of building one.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
: "${PORT:=8080}" "${STREAM_PORT:=3112}" "${WORKER_PORT:=49134}"

command -v node >/dev/null || { echo "the chat example needs Node.js 20 or later (and npm)" >&2; exit 1; }
if [ ! -d "$here/node_modules" ]; then
  echo "== installing the example's worker SDK (npm ci)"
  npm ci --prefix "$here" --no-audit --no-fund
fi

bin="${STREAMHOST_BIN:-}"
if [ -z "$bin" ]; then
  command -v cargo >/dev/null || { echo "the chat example builds streamhost: it needs Rust's cargo (or set STREAMHOST_BIN)" >&2; exit 1; }
  echo "== building streamhost (the first build takes a few minutes)"
  cargo build --release --manifest-path "$repo/Cargo.toml"
  bin="${CARGO_TARGET_DIR:-$repo/target}/release/streamhost"
fi

config="$(mktemp -d)/iii-config.yaml"
cat >"$config" <<YAML
workers:
  - name: iii-worker-manager
    config: { host: 127.0.0.1, port: $WORKER_PORT }
  - name: iii-stream
    config:
      host: 127.0.0.1
      port: $STREAM_PORT
      adapter: { name: kv, config: { store_method: in_memory } }
YAML
"$bin" serve --config "$config" &
engine=$!
trap 'kill $engine 2>/dev/null' EXIT
# The engine prints its addresses once it listens; give it a moment before the worker dials.
for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/"$WORKER_PORT") 2>/dev/null && break; sleep 0.1; done

III_URL="ws://127.0.0.1:$WORKER_PORT" STREAMHOST_CLIENT_URL="ws://127.0.0.1:$STREAM_PORT" PORT="$PORT" \
  node "$here/server.mjs"
