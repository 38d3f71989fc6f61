#!/usr/bin/env bash
# Cost of wal-push's per-call state record (issue 9): <spool>/state/archive.json and, with [metrics] textfile_dir,
# the node-exporter textfile. Times the cheapest wal-push call there is (an identical .history file already in the
# repository: process start, config, spool lock, one repository read, no upload), so that the record's share shows.
#
# Usage: BEFORE=/path/to/old/wal-push AFTER=/path/to/new/wal-push bash bench/wal_push_state.sh   (as root)
#        (build the old binary from the commit before the state hook; AFTER defaults to target/release/wal-push)
# Env:   RUNS=300 (calls per variant; the variants alternate so that load changes hit them alike)
#        DIRS="/tmp /dev/shm" (file systems to hold the spool: ext4 vs tmpfs shows the rename's cost)
set -euo pipefail
RUNS=${RUNS:-300}
AFTER=${AFTER:-$(cd "$(dirname "$0")/.." && pwd)/target/release/wal-push}
BEFORE=${BEFORE:?set BEFORE to a wal-push built without the state record}
DIRS=${DIRS:-"/tmp /dev/shm"}
W=$(mktemp -d /tmp/backupctl-bench-state-XXXX)
trap 'rm -rf "$W" /tmp/backupctl-bench-state-s-* /dev/shm/backupctl-bench-state-s-*' EXIT
mkdir -p "$W/pg_wal/archive_status" "$W/tf"
printf '1\t0/3000000\tno recovery target specified\n' > "$W/pg_wal/00000002.history"
for i in 1 2 3; do touch "$W/pg_wal/archive_status/00000002000000000000000$i.ready"; done
VARIANTS=()
for d in $DIRS; do
    s=$(mktemp -d "$d/backupctl-bench-state-s-XXXX")
    for v in before after after-textfile; do
        mkdir -p "$s/spool-$v" "$W/repo-$v"
        {
            printf '[repository]\nurl = "file://%s/repo-%s"\n[spool]\npath = "%s/spool-%s"\n' "$W" "$v" "$s" "$v"
            if [ "$v" = after-textfile ]; then printf '[metrics]\ntextfile_dir = "%s/tf"\n' "$W"; fi
        } > "$W/$v-$(basename "$d").toml"
        bin=$AFTER; [ "$v" = before ] && bin=$BEFORE
        "$bin" --config "$W/$v-$(basename "$d").toml" "$W/pg_wal/00000002.history" 2>>"$W/setup.log" || { cat "$W/setup.log"; exit 1; }
        VARIANTS+=("$v@$d|$bin|$W/$v-$(basename "$d").toml")
    done
done
python3 - "$RUNS" "$W/pg_wal/00000002.history" "${VARIANTS[@]}" <<'PY'
import statistics, subprocess, sys, time
runs, wal, variants = int(sys.argv[1]), sys.argv[2], [v.split("|") for v in sys.argv[3:]]
times = {name: [] for name, _, _ in variants}
for _ in range(runs):
    for name, binary, config in variants:
        t = time.perf_counter()
        subprocess.run([binary, "--config", config, wal], stderr=subprocess.DEVNULL, check=True)
        times[name].append((time.perf_counter() - t) * 1000)
print(f"{'variant':32s} {'median':>8s} {'p10':>8s} {'min':>8s}  (ms per call, {runs} calls each)")
for name, v in times.items():
    v.sort()
    print(f"{name:32s} {statistics.median(v):8.2f} {v[len(v) // 10]:8.2f} {v[0]:8.2f}")
PY
uptime
