#!/usr/bin/env bash
# Runs the benchmark scenarios against streamhost and, with --floor, against the raw fan-out
# floor (../shared/tools/raw-floor; for the writes and reads scenarios, the worker-call floor
# load/src/bin/streamhost-write-floor.rs), each pinned to core 0 with the load generator on core 1.
#
#   scripts/bench.sh                       every scenario, streamhost only
#   scripts/bench.sh --floor fanout-1000   one scenario, streamhost then the floor
#   scripts/bench.sh --floor --repeat 3    each run three times, alternating; the table shows
#                                          the median (this machine is noisy: use it)
#   scripts/bench.sh --redis --repeat 3 writes-durable writes-memory reads-memory
#                                          each writes (and reads) scenario alternated with redis-server
#                                          (AOF with appendfsync always, or no persistence) under
#                                          redis-benchmark at the same pipelining (SETs to distinct keys,
#                                          as streamhost's sets go to distinct items); prints the ratio
#   scripts/bench.sh --redis --floor --repeat 3 writes-durable writes-memory reads-memory
#                                          the same with the worker-call floor as a third: what the wire
#                                          alone costs, and how far streamhost is from it
#
# Scenarios: fanout-1000 fanout-8000 groups-8000 idle-8000 burst paced-1000 paced-8000 storm-8000
#            writes-memory writes-durable reads-memory
#            storm-redis storm-redis-presence (the storm with the Redis adapter, on a
#            redis-server the script starts; the second keeps presence on the stream)
# Results: bench-results/<target>-<scenario>.json and a table at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

floor=0
redis=0
repeat=1
scenarios=()
while [ $# -gt 0 ]; do
  arg=$1; shift
  case "$arg" in
    --floor) floor=1 ;;
    --redis) redis=1 ;;
    --repeat) repeat=$1; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) scenarios+=("$arg") ;;
  esac
done
[ ${#scenarios[@]} -gt 0 ] || scenarios=(fanout-1000 fanout-8000 groups-8000 idle-8000 burst paced-1000 paced-8000 storm-8000 writes-memory writes-durable reads-memory)

target_dir="${CARGO_TARGET_DIR:-target}"
echo "== building (release)"
cargo build --release -p streamhost -p streamhost-load --bins
if [ "$floor" = 1 ]; then
  cargo build --release --manifest-path ../shared/tools/raw-floor/Cargo.toml --target-dir /tmp/raw-floor
fi
ulimit -n "$(ulimit -Hn)"
mkdir -p bench-results
work=$(mktemp -d)
trap 'pkill -f "$work" 2>/dev/null || true; pkill -x raw-floor 2>/dev/null || true; pkill -f streamhost-write-floor 2>/dev/null || true; rm -rf "$work"' EXIT

config() {  # $1: in_memory | file_based | redis | redis-presence
  local adapter="{ name: kv, config: { store_method: $1, file_path: $work/store } }" presence=""
  case "$1" in
    redis*) adapter="{ name: redis, config: { redis_url: \"redis://127.0.0.1:16390\" } }" ;;
  esac
  [ "$1" = redis-presence ] && presence="      presence: { streams: [bench], max_members: 1000 }"
  cat > "$work/iii-config.yaml" <<YAML
workers:
  - name: iii-worker-manager
    config: { host: 127.0.0.1, port: 49134 }
  - name: iii-stream
    config:
      host: 127.0.0.1
      port: 3112
$presence
      adapter: $adapter
YAML
}

options() {  # the load generator's options for a scenario
  case "$1" in
    fanout-1000)    echo "--subscribers 1000 --events 1000" ;;
    fanout-8000)    echo "--subscribers 8000 --events 200" ;;
    groups-8000)    echo "--subscribers 8000 --groups 8000 --events 80000" ;;
    idle-8000)      echo "--subscribers 8000 --events 0 --idle-seconds 3" ;;
    burst)          echo "--subscribers 100 --events 2000 --pause-ms 1000" ;;
    paced-1000)     echo "--subscribers 1000 --events 400 --rate 40" ;;
    paced-8000)     echo "--subscribers 8000 --events 5 --rate 1" ;;
    # A reconnect storm: 5 s into 40 sends/s, all 8,000 drop and rejoin from their offsets.
    storm-8000|storm-redis|storm-redis-presence) echo "--subscribers 8000 --events 600 --rate 40 --storm-after 5" ;;
    # 4 connections with 1,024 calls in flight each, 100-byte values: what redis_run gives Redis.
    writes-memory|writes-durable) echo "--subscribers 0 --function set --events 200000 --window 1024 --workers 4" ;;
    # The same load reading one stored item: the read path, to set beside writes-memory.
    reads-memory)   echo "--subscribers 0 --function get --events 200000 --window 1024 --workers 4" ;;
    *) echo "unknown scenario $1" >&2; exit 2 ;;
  esac
}

wait_port() {
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/3112) 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on 3112" >&2; exit 1
}

run() {  # $1: streamhost | floor, $2: scenario, $3: round
  local target=$1 scenario=$2 round=$3 pid
  rm -rf "$work/store"
  if [ "$target" = floor ]; then
    case "$scenario" in
      writes-durable) taskset -c 0 "$target_dir/release/streamhost-write-floor" --durable "$work/store" > "$work/floor.log" 2>&1 & ;;
      writes-*|reads-*) taskset -c 0 "$target_dir/release/streamhost-write-floor" > "$work/floor.log" 2>&1 & ;;
      *) taskset -c 0 /tmp/raw-floor/release/raw-floor > "$work/floor.log" 2>&1 & ;;
    esac
  else
    case "$scenario" in
      writes-durable) config file_based ;;
      storm-redis) config redis ;;
      storm-redis-presence) config redis-presence ;;
      *) config in_memory ;;
    esac
    if [[ "$scenario" = storm-redis* ]]; then
      # Unpinned, without persistence: a shared Redis of its own, as a deployment has.
      redis-server --port 16390 --bind 127.0.0.1 --save '' --appendonly no > "$work/redis.log" 2>&1 &
      for _ in $(seq 100); do redis-cli -p 16390 ping >/dev/null 2>&1 && break; sleep 0.1; done
    fi
    taskset -c 0 "$target_dir/release/streamhost" serve --config "$work/iii-config.yaml" > "$work/engine.log" 2>&1 &
  fi
  pid=$!
  wait_port
  echo "== $target $scenario (round $round)"
  # shellcheck disable=SC2046
  taskset -c 1 "$target_dir/release/streamhost-load" $(options "$scenario") --engine-pid "$pid" --json "bench-results/$target-$scenario-$round.json" 2>&1 | grep -v '^  sent'
  kill "$pid"; wait "$pid" 2>/dev/null || true
  if [[ "$scenario" = storm-redis* ]]; then redis-cli -p 16390 shutdown nosave >/dev/null 2>&1 || true; fi
  sleep 1
}

redis_run() {  # $1: writes-durable | writes-memory | reads-memory, $2: round; Redis pinned as streamhost is
  local scenario=$1 round=$2 pid port=16379 persist test=set keys=()
  # streamhost's writes store 200,000 distinct items (`i<seq>`): Redis's SETs get distinct keys
  # too (random in 10^8, so nearly all new), not redis-benchmark's default of one key, which
  # never grows its table (that alone ran Redis 1.2-1.9x faster on this machine).
  [ "$scenario" = reads-memory ] && test=get || keys=(-r 100000000)
  rm -rf "$work/redis"; mkdir -p "$work/redis"
  if [ "$scenario" = writes-durable ]; then
    persist=(--appendonly yes --appendfsync always --save '')
  else
    persist=(--appendonly no --save '')
  fi
  taskset -c 0 redis-server --port "$port" --bind 127.0.0.1 --dir "$work/redis" "${persist[@]}" > "$work/redis.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  echo "== redis $scenario (round $round)"
  # GET reads the key SET wrote (redis-benchmark's default key): a stored value, as streamhost's
  taskset -c 1 redis-benchmark -p "$port" -P 1024 -c 4 -d 100 -t set -n 1 -q > /dev/null
  taskset -c 1 redis-benchmark -p "$port" -P 1024 -c 4 -d 100 -t "$test" -n 200000 "${keys[@]}" --csv > "$work/redis.csv"
  python3 - "$work/redis.csv" "bench-results/redis-$scenario-$round.json" "$test" <<'PY'
import csv, json, sys
rows = {r[0]: r for r in csv.reader(open(sys.argv[1])) if r}
head, row = rows["test"], rows[sys.argv[3].upper()]
f = dict(zip(head, row))
rps = float(f["rps"])
print(f"  {rps:.0f} {sys.argv[3]}s/s")
json.dump({"deliveries_per_second": 0, "calls_per_second": rps,
           "latency_us": {"p50": float(f.get("p50_latency_ms", 0)) * 1000, "p99": float(f.get("p99_latency_ms", 0)) * 1000},
           "lost": 0, "duplicated": 0, "closed_as_slow_and_told": 0}, open(sys.argv[2], "w"))
PY
  kill "$pid"; wait "$pid" 2>/dev/null || true
  sleep 1
}

rm -f bench-results/*.json
for round in $(seq "$repeat"); do
  for s in "${scenarios[@]}"; do
    run streamhost "$s" "$round"
    case "$s" in
      writes-*|reads-*) if [ "$redis" = 1 ]; then redis_run "$s" "$round"; fi ;;
    esac
    if [ "$floor" = 1 ]; then run floor "$s" "$round"; fi
  done
done

echo
echo "== summary"
python3 - "${scenarios[@]}" <<'PY'
import glob, json, statistics, sys
def med(runs, f):
    return statistics.median(f(j) for j in runs)
print(f"{'scenario':<22}{'target':<12}{'runs':>5}{'deliveries/s':>14}{'calls/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'KB/conn':>9}{'lost':>7}{'dup':>6}{'closed':>8}")
for s in sys.argv[1:]:
    for t in ("streamhost", "floor", "redis"):
        runs = [json.load(open(p)) for p in sorted(glob.glob(f"bench-results/{t}-{s}-[0-9]*.json"))]
        if not runs: continue
        print(f"{s:<22}{t:<12}{len(runs):>5}{med(runs, lambda j: j['deliveries_per_second']):>14.0f}{med(runs, lambda j: j['calls_per_second']):>11.0f}"
              f"{med(runs, lambda j: j['latency_us']['p50'])/1000:>9.1f}{med(runs, lambda j: j['latency_us']['p99'])/1000:>9.1f}"
              f"{med(runs, lambda j: (j.get('engine_bytes_per_connection') or 0))/1000:>9.1f}"
              f"{sum(j['lost'] for j in runs):>7}{sum(j['duplicated'] for j in runs):>6}{sum(j['closed_as_slow_and_told'] for j in runs):>8}")
    runs = {t: [json.load(open(p)) for p in glob.glob(f"bench-results/{t}-{s}-[0-9]*.json")] for t in ("streamhost", "floor", "redis")}
    calls = {t: med(r, lambda j: j['calls_per_second']) for t, r in runs.items() if r}
    for a, b in (("streamhost", "redis"), ("floor", "redis"), ("streamhost", "floor")):
        if calls.get(a) and calls.get(b) and s.startswith(("writes-", "reads-")):
            print(f"{s:<22}{a} / {b} (median calls/s): {calls[a] / calls[b]:.2f}x")
PY
