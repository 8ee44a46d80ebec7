#!/usr/bin/env bash
# Runs the README's first command as a newcomer would, so the README cannot drift: the first
# line of its first ```sh block, run from a directory of its own inside the clone (cargo finds
# the manifest above it, and the engine's ./data lands there). It runs the command with
# `--help` appended, then with `--port 0 --worker-port 0` appended (free ports, so that
# nothing else on 3112/49134 can fail it), waits for the "streamhost listening" line, asks
# /health, stops the engine with SIGTERM and expects a clean exit.
set -euo pipefail
cd "$(dirname "$0")/.."

line=$(awk '/^```sh/ { inside = 1; next } inside && /^```/ { exit } inside && NF { print; exit }' README.md)
cmd=${line%%#*}
cmd=${cmd%"${cmd##*[![:space:]]}"}
[ -n "$cmd" ] || { echo "README.md: its first \`\`\`sh block has no command" >&2; exit 1; }
echo "== the README's first command: $cmd"

work=$PWD/target/readme-start
rm -rf "$work"
mkdir -p "$work"
cd "$work"

help=$(bash -c "$cmd --help")
grep -qi "usage: streamhost" <<<"$help" || { echo "\`$cmd --help\` printed no usage:" >&2; echo "$help" >&2; exit 1; }

# `cargo run` replaces itself with the engine, so $! is the engine's pid.
bash -c "exec $cmd --port 0 --worker-port 0" >stdout.log 2>stderr.log &
pid=$!
# Whatever goes wrong below, the engine does not outlive the check.
trap 'kill "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  grep -q "streamhost listening" stdout.log && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.5
done
if ! grep -q "streamhost listening" stdout.log; then
  echo "\`$cmd\` did not start listening:" >&2
  cat stdout.log stderr.log >&2
  exit 1
fi
cat stdout.log
port=$(sed -n 's/.*clients ws:\/\/[^ ]*:\([0-9]*\) .*/\1/p' stdout.log)
exec 3<>"/dev/tcp/127.0.0.1/$port"
printf 'GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
status=$(timeout 10 head -1 <&3 || true)
exec 3<&-
kill -TERM "$pid"
code=0
wait "$pid" || code=$?
if [[ "$status" != *" 200 "* ]] || [ "$code" -ne 0 ] || [ ! -d data ]; then
  echo "GET /health: ${status:-no answer}; exit code after SIGTERM: $code; ./data made: $([ -d data ] && echo yes || echo no)" >&2
  cat stderr.log >&2
  exit 1
fi
echo "== the README's first command serves, and stops cleanly on SIGTERM"
