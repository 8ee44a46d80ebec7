#!/usr/bin/env bash
# Runs the whole test suite. Installs the SDK test clients (npm and PyPI iii-sdk) and the browser
# tests' puppeteer-core on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d tests/sdk/node/node_modules ] || [ tests/sdk/node/package-lock.json -nt tests/sdk/node/node_modules ]; then
  echo "== installing the Node iii-sdk test client (npm ci)"
  npm ci --prefix tests/sdk/node --no-audit --no-fund
  touch tests/sdk/node/node_modules
fi
if [ ! -d tests/browser/node_modules ] || [ tests/browser/package-lock.json -nt tests/browser/node_modules ]; then
  echo "== installing puppeteer-core for the browser tests (npm ci)"
  npm ci --prefix tests/browser --no-audit --no-fund
  touch tests/browser/node_modules
fi
if [ ! -d examples/chat/node_modules ] || [ examples/chat/package-lock.json -nt examples/chat/node_modules ]; then
  echo "== installing the chat example's iii-sdk, for its test in tests/browser.rs (npm ci)"
  npm ci --prefix examples/chat --no-audit --no-fund
  touch examples/chat/node_modules
fi
venv=tests/sdk/python/.venv
if [ ! -x "$venv/bin/python" ] || [ tests/sdk/python/requirements.txt -nt "$venv" ]; then
  echo "== installing the Python iii-sdk test client (venv + pip)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet -r tests/sdk/python/requirements.txt
  touch "$venv"
fi

# tests/load_generator.rs runs the load generator's binary. `cargo test` builds the binaries of a
# package only for that package's own integration tests, and load/ has none, so build it here.
echo "== cargo build -p streamhost-load"
cargo build -p streamhost-load
echo "== cargo test"
cargo test --workspace --no-fail-fast "$@"
