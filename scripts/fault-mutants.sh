#!/usr/bin/env bash
# Shows that the durable store's randomized fault test (src/storage/wal/sim_tests.rs) can fail:
# reverts one durability fix at a time, runs the test, restores the file, and prints whether
# the test caught the revert.   CASES=400 scripts/fault-mutants.sh
set -u
cd "$(dirname "$0")/.."
export RUST_BACKTRACE=0 WAL_FAULT_CASES=${CASES:-400}
run() {
  name=$1; file=$2; from=$3; to=$4
  cp "$file" /tmp/mutant.bak
  trap 'cp /tmp/mutant.bak "$file"' INT TERM
  python3 - "$file" "$from" "$to" <<'PY'
import sys
p,a,b=sys.argv[1:]
s=open(p).read()
assert a in s, a
open(p,'w').write(s.replace(a,b,1))
PY
  out=$(cargo test -q --lib sim_tests 2>&1)
  cp /tmp/mutant.bak "$file"
  if echo "$out" | grep -q "test result: ok"; then echo "$name: NOT caught"; else echo "$name: caught: $(echo "$out" | grep -m1 -oE 'case [0-9]+ failed')  $(echo "$out" | grep -m1 -A1 panicked | tail -1 | cut -c1-160)"; fi
}
run "no sync before acknowledging" src/storage/wal/mod.rs "self.file.append(&buf).and_then(|_| self.file.sync())" "self.file.append(&buf)"
run "no directory sync after the rewrite's rename" src/storage/wal/rewrite.rs "let dir_synced = match self.disk.sync_dir(dir) {" "let dir_synced = match Ok::<(), std::io::Error>(()) {"
run "memory not reloaded after a failed write" src/storage/kv_store.rs "*for_reload.write().unwrap() = fresh;" "drop(fresh);"
run "damage dropped as a torn tail" src/storage/wal/recovery.rs "None if bad == Bad::Incomplete || data[off..].iter().all(|&b| b == 0) =>" "_ =>"
run "rewrite's temporary file left behind" src/storage/wal/rewrite.rs "if !self.renamed" "if false"
run "no resume after the disk heals" src/storage/wal/mod.rs "self.shared.pending.lock().unwrap().failed = None;" ""
run "'not stored' though the log could not be cut back" src/storage/wal/mod.rs "let error = match cut {" "let error = match Ok::<(), std::io::Error>(()).and(cut.or(Ok(()))) {"
run "delete of a missing item acknowledged while the disk fails" src/storage/kv_store.rs "wal.check_writable()?;" ""
