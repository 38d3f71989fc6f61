#!/usr/bin/env bash
# Per-call wall time of wal-push for one 16 MiB pgbench WAL segment, against pgbackrest archive-push in the same
# run; the spool-record fast path (a segment already pushed by look-ahead) against pgBackRest's async fast path;
# and peak RSS of wal-push / wal-fetch (and the pgBackRest peers) from /usr/bin/time -v.
#
# Usage: bash bench/wal_push_latency.sh            (as root)
# Env:   RUNS=10 (hyperfine runs per case)  S3=1 (also time pushes into S3 on loopback; 0 to skip)
#        S3_SERVER=moto|s3s|s3s-fs  PGBR_COMPRESS_LEVEL (empty = pgBackRest default for zst)  KEEP=1 (keep work dir)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

RUNS=${RUNS:-10}
S3=${S3:-1}
K=9   # segments used: S[0] initializes repos, S[4] is the cold one, S[1..8] are pushed ahead

bench_start latency

PORT=$(free_port)
SRC=$WORK/src
log "source cluster (port $PORT): generating $((K + 3)) segments of pgbench WAL"
pg_new "$SRC" "$PORT" "wal_keep_size = '2GB'"
pg_start "$SRC"
gen_wal "$PORT" $((K + 3))
mapfile -t SEGS < <(find "$SRC/pg_wal/archive_status" -name '*.ready' -printf '%f\n' | sed 's/\.ready$//' \
    | grep -E '^[0-9A-F]{24}$' | sort | tail -n "$K")
[ ${#SEGS[@]} -eq "$K" ] || die "expected $K ready segments, got ${#SEGS[@]}"
log "segments ${SEGS[0]} .. ${SEGS[$((K - 1))]}"

R=$WORK/repos; SP=$WORK/spools; TPL=$WORK/templates; J=$WORK/json
mkdir -p "$R" "$SP" "$TPL" "$J"
chown -R postgres:postgres "$WORK"

# The cold segment: the one of S[1..8] with the median zstd -1 size (a typical segment, not a bulk-load one).
COLD=$(for s in "${SEGS[@]:1}"; do echo "$(zstd -1 -q -c "$SRC/pg_wal/$s" | wc -c) $s"; done | sort -n | sed -n 4p | cut -d' ' -f2)
COLD_Z=$(zstd -1 -q -c "$SRC/pg_wal/$COLD" | wc -c)
log "cold segment $COLD: zstd -1 ratio $(awk "BEGIN {printf \"%.2f\", $SEG / $COLD_Z}")"
# A fake pg_wal holding only the cold segment (no other .ready: no look-ahead in the timed call).
mkdir -p "$WORK/cold/pg_wal/archive_status"
cp "$SRC/pg_wal/$COLD" "$WORK/cold/pg_wal/"
touch "$WORK/cold/pg_wal/archive_status/$COLD.ready"
# Another with S[0] only, to initialize repositories.
mkdir -p "$WORK/init/pg_wal/archive_status"
cp "$SRC/pg_wal/${SEGS[0]}" "$WORK/init/pg_wal/"
# A fake pg_wal with all K segments .ready, for look-ahead.
mkdir -p "$WORK/ahead/pg_wal/archive_status"
for s in "${SEGS[@]}"; do
    cp "$SRC/pg_wal/$s" "$WORK/ahead/pg_wal/"
    touch "$WORK/ahead/pg_wal/archive_status/$s.ready"
done
chown -R postgres:postgres "$WORK"

PA=(push_concurrency=2 push_ahead=16 fetch_prefetch=0)
walpush_conf "$WORK/wp-empty.toml" "file://$R/wp-empty" "$SP/wp-empty" "${PA[@]}"
walpush_conf "$WORK/wp-init.toml" "file://$R/wp-init" "$SP/wp-init" "${PA[@]}"
walpush_conf "$WORK/wp-ahead.toml" "file://$R/wp-ahead" "$SP/wp-ahead" "${PA[@]}"
mkdir -p "$WORK/pgbr3" "$WORK/pgbr1" "$WORK/pgbra"
pgbr_conf "$WORK/pgbr3/pgbackrest.conf" posix "$R/pgbr3" "$SRC" "$PORT"
PGBR_COMPRESS_LEVEL=1 pgbr_conf "$WORK/pgbr1/pgbackrest.conf" posix "$R/pgbr1" "$SRC" "$PORT"

if [ "$S3" = 1 ]; then
    s3_start
    stunnel_start
    s3_bucket walpush
    s3_bucket pgbr
    walpush_conf "$WORK/wp-s3.toml" "s3://walpush/lat" "$SP/wp-s3" "${PA[@]}"
    mkdir -p "$WORK/pgbrs3"
    pgbr_conf "$WORK/pgbrs3/pgbackrest.conf" s3 "/lat" "$SRC" "$PORT"
fi
chown -R postgres:postgres "$WORK"

# Initialized repositories: descriptor / stanza, plus S[0] already archived. Saved as templates.
log "initializing repositories (wal-push: first push; pgBackRest: stanza-create + archive-push of S[0])"
as_pg "$WAL_PUSH" --config "$WORK/wp-init.toml" "$WORK/init/pg_wal/${SEGS[0]}" 2>>"$WORK/init.log"
PGBR_CONFS=(pgbr3 pgbr1)
[ "$S3" = 1 ] && PGBR_CONFS+=(pgbrs3)
for c in "${PGBR_CONFS[@]}"; do
    as_pg pgbackrest --config="$WORK/$c/pgbackrest.conf" --stanza=bench stanza-create >>"$WORK/init.log" 2>&1 \
        || { cat "$WORK/init.log"; die "stanza-create ($c) failed"; }
    as_pg pgbackrest --config="$WORK/$c/pgbackrest.conf" --stanza=bench archive-push "$SRC/pg_wal/${SEGS[0]}" \
        >>"$WORK/init.log" 2>&1 || { cat "$WORK/init.log"; die "archive-push ($c) failed"; }
done
if [ "$S3" = 1 ]; then
    as_pg "$WAL_PUSH" --config "$WORK/wp-s3.toml" "$WORK/init/pg_wal/${SEGS[0]}" 2>>"$WORK/init.log"
fi
for d in wp-init pgbr3 pgbr1; do cp -a "$R/$d" "$TPL/$d"; done
pg_stop "$SRC"

# S3 prepare step: delete the objects of a bucket whose key contains the segment name.
cp "$BENCH_DIR/s3del.sh" "$WORK/s3del.sh"
S3DEL="$WORK/s3del.sh ${S3_PORT:-0}"
chown -R postgres:postgres "$WORK"

HF=(hyperfine --style basic --runs "$RUNS" --warmup 1)
CW="$WORK/cold/pg_wal/$COLD"
log "timing one cold segment push ($RUNS runs each)"
as_pg "${HF[@]}" --export-json "$J/cold.json" \
    -n "wal-push file://, empty repo (first push ever)" \
    --prepare "rm -rf $R/wp-empty $SP/wp-empty && mkdir -p $SP/wp-empty" \
    "$WAL_PUSH --config $WORK/wp-empty.toml $CW" \
    -n "wal-push file://, initialized repo" \
    --prepare "rm -rf $R/wp-init $SP/wp-init && cp -a $TPL/wp-init $R/wp-init && mkdir -p $SP/wp-init" \
    "$WAL_PUSH --config $WORK/wp-init.toml $CW" \
    -n "pgbackrest archive-push posix zst (default level 3), sync" \
    --prepare "rm -rf $R/pgbr3 && cp -a $TPL/pgbr3 $R/pgbr3" \
    "pgbackrest --config=$WORK/pgbr3/pgbackrest.conf --stanza=bench archive-push $CW" \
    -n "pgbackrest archive-push posix zst level 1, sync" \
    --prepare "rm -rf $R/pgbr1 && cp -a $TPL/pgbr1 $R/pgbr1" \
    "pgbackrest --config=$WORK/pgbr1/pgbackrest.conf --stanza=bench archive-push $CW" \
    >"$WORK/hf-cold.out" 2>&1 || { cat "$WORK/hf-cold.out"; die "hyperfine (cold) failed"; }

if [ "$S3" = 1 ]; then
    log "timing one cold segment push into S3 ($S3_SERVER on loopback; pgBackRest through stunnel)"
    as_pg "${HF[@]}" --export-json "$J/s3.json" \
        -n "wal-push s3:// ($S3_SERVER), initialized bucket" \
        --prepare "$S3DEL walpush $COLD && rm -rf $SP/wp-s3 && mkdir -p $SP/wp-s3" \
        "$WAL_PUSH --config $WORK/wp-s3.toml $CW" \
        -n "pgbackrest archive-push s3 zst (default level 3), sync, via stunnel" \
        --prepare "$S3DEL pgbr $COLD" \
        "pgbackrest --config=$WORK/pgbrs3/pgbackrest.conf --stanza=bench archive-push $CW" \
        >"$WORK/hf-s3.out" 2>&1 || { cat "$WORK/hf-s3.out"; die "hyperfine (s3) failed"; }
fi

# ---- fast path: a segment already recorded by look-ahead
log "look-ahead: wal-push ${SEGS[0]} with ${#SEGS[@]} .ready segments (pushes the others ahead)"
AW=$WORK/ahead/pg_wal
/usr/bin/time -v -o "$WORK/rss-ahead.txt" runuser -u postgres -- \
    "$WAL_PUSH" --config "$WORK/wp-ahead.toml" "$AW/${SEGS[0]}" 2>"$WORK/ahead-first.log" \
    || { cat "$WORK/ahead-first.log"; die "wal-push with look-ahead failed"; }
AHEAD_FIRST_S=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$WORK/rss-ahead.txt")
NREC=$(find "$SP/wp-ahead/push" -type f 2>/dev/null | wc -l)
log "  first call took $AHEAD_FIRST_S (m:ss), left $NREC spool records"
[ "$NREC" -ge 1 ] || die "look-ahead left no spool record in $SP/wp-ahead/push"
mkdir -p "$TPL/records"
cp -a "$SP/wp-ahead/push/." "$TPL/records/"
FAST=${SEGS[5]}
# check the fast path is what gets timed
as_pg "$WAL_PUSH" --config "$WORK/wp-ahead.toml" "$AW/$FAST" >"$WORK/fast-check.log" 2>&1
FAST_NOTE=$(grep -o 'already archived by look-ahead' "$WORK/fast-check.log" | head -1 || true)
[ -n "$FAST_NOTE" ] || log "  WARNING: the fast-path call did not log 'already archived by look-ahead': $(tr '\n' ' ' < "$WORK/fast-check.log")"

# pgBackRest async peer: pg1-path is a copy of the source data directory whose archive_status lists only our
# K segments; the first archive-push forks the async process, which pushes all of them and leaves .ok files.
log "pgBackRest async: archive-push ${SEGS[0]} (the async process pushes the others)"
PD=$WORK/pgbr-ahead-data
cp -a "$SRC" "$PD"
rm -f "$PD"/pg_wal/archive_status/*
for s in "${SEGS[@]}"; do touch "$PD/pg_wal/archive_status/$s.ready"; done
chown -R postgres:postgres "$PD"
pgbr_conf "$WORK/pgbra/pgbackrest.conf" posix "$R/pgbra" "$PD" "$PORT" archive-async=y process-max=2
as_pg "$PG_BIN/pg_ctl" -D "$PD" -o "-p $PORT -c archive_mode=off" -l "$PD.log" -w start >/dev/null
CLUSTERS+=("$PD")
as_pg pgbackrest --config="$WORK/pgbra/pgbackrest.conf" --stanza=bench stanza-create >>"$WORK/init.log" 2>&1 \
    || die "stanza-create (async) failed"
pg_stop "$PD"
PGBR_FAST=1
as_pg pgbackrest --config="$WORK/pgbra/pgbackrest.conf" --stanza=bench archive-push "$PD/pg_wal/${SEGS[0]}" \
    >>"$WORK/init.log" 2>&1 || { log "  pgBackRest async archive-push failed (see $WORK/init.log)"; PGBR_FAST=0; }
OUTDIR=$WORK/pgbra/pgbr-spool/archive/bench/out
for _ in $(seq 1 300); do
    [ -f "$OUTDIR/${SEGS[$((K - 1))]}.ok" ] && break
    sleep 0.1
done
[ -f "$OUTDIR/$FAST.ok" ] || { log "  pgBackRest async left no $FAST.ok"; PGBR_FAST=0; }
while pgrep -f "config=$WORK/pgbra/" >/dev/null; do sleep 0.2; done   # the async process exits by itself
mkdir -p "$TPL/pgbr-out"
cp -a "$OUTDIR/." "$TPL/pgbr-out/"

log "timing the fast path, and a first call that pushes 8 segments ahead ($RUNS runs each)"
walpush_conf "$WORK/wp-ahead-c1.toml" "file://$R/wp-ahead-c1" "$SP/wp-ahead-c1" push_concurrency=1 push_ahead=16
walpush_conf "$WORK/wp-ahead-c2.toml" "file://$R/wp-ahead-c2" "$SP/wp-ahead-c2" push_concurrency=2 push_ahead=16
FASTCMDS=(-n "wal-push, segment recorded by look-ahead (spool record)"
    --prepare "cp -a $TPL/records/. $SP/wp-ahead/push/"
    "$WAL_PUSH --config $WORK/wp-ahead.toml $AW/$FAST"
    -n "wal-push, segment already in repo, no record (re-push of identical file)"
    --prepare "rm -rf $SP/wp-ahead/push && mkdir -p $SP/wp-ahead/push"
    "$WAL_PUSH --config $WORK/wp-ahead.toml $CW"
    -n "wal-push, first call + 8 pushed ahead, push_concurrency=1 (empty repo)"
    --prepare "rm -rf $R/wp-ahead-c1 $SP/wp-ahead-c1 && mkdir -p $SP/wp-ahead-c1"
    "$WAL_PUSH --config $WORK/wp-ahead-c1.toml $AW/${SEGS[0]}"
    -n "wal-push, first call + 8 pushed ahead, push_concurrency=2 (empty repo)"
    --prepare "rm -rf $R/wp-ahead-c2 $SP/wp-ahead-c2 && mkdir -p $SP/wp-ahead-c2"
    "$WAL_PUSH --config $WORK/wp-ahead-c2.toml $AW/${SEGS[0]}")
if [ "$PGBR_FAST" = 1 ]; then
    FASTCMDS+=(-n "pgbackrest archive-push async, segment already pushed (.ok in spool)"
        --prepare "cp -a $TPL/pgbr-out/. $OUTDIR/"
        "pgbackrest --config=$WORK/pgbra/pgbackrest.conf --stanza=bench archive-push $PD/pg_wal/$FAST")
fi
as_pg "${HF[@]}" --export-json "$J/fast.json" "${FASTCMDS[@]}" >"$WORK/hf-fast.out" 2>&1 \
    || { cat "$WORK/hf-fast.out"; die "hyperfine (fast path) failed"; }
while pgrep -f "config=$WORK/pgbra/" >/dev/null; do sleep 0.2; done

# ---- peak RSS
log "peak RSS (/usr/bin/time -v)"
RSS_ROWS=()
# rss LABEL CMD...: run as postgres under /usr/bin/time -v; record max RSS and wall time
rss() {
    local label=$1
    shift
    local out=$WORK/rss.$RANDOM.txt
    if /usr/bin/time -v -o "$out" runuser -u postgres -- "$@" >"$out.log" 2>&1; then
        RSS_ROWS+=("$(printf '%-72s %8.1f %10s %9s' "$label" \
            "$(awk -F': ' '/Maximum resident/ {print $2/1024}' "$out")" \
            "$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$out")" \
            "$(awk -F': ' '/User time/ {u=$2} /System time/ {s=$2} END {printf "%.2f", u+s}' "$out")")")
    else
        RSS_ROWS+=("$(printf '%-72s FAILED (exit %s): %s' "$label" "$(awk -F': ' '/Exit status/ {print $2}' "$out")" \
            "$(tail -2 "$out.log" | tr '\n' ' ')")")
    fi
}
rm -rf "$R/wp-empty" "$SP/wp-empty"; mkdir -p "$SP/wp-empty"; chown postgres:postgres "$SP/wp-empty"
rss "wal-push file://, one cold segment, empty repo" "$WAL_PUSH" --config "$WORK/wp-empty.toml" "$CW"
RSS_ROWS+=("$(printf '%-72s %8.1f %10s' "wal-push file://, first call + $((K - 1)) pushed ahead (concurrency 2)" \
    "$(awk -F': ' '/Maximum resident/ {print $2/1024}' "$WORK/rss-ahead.txt")" "$AHEAD_FIRST_S")")
rm -rf "$R/wp-ahead-c2" "$SP/wp-ahead-c2"; mkdir -p "$SP/wp-ahead-c2"; chown postgres:postgres "$SP/wp-ahead-c2"
rss "wal-push file://, first call + $((K - 1)) pushed ahead (concurrency 2), again" \
    "$WAL_PUSH" --config "$WORK/wp-ahead-c2.toml" "$AW/${SEGS[0]}"
rm -rf "$R/pgbr3"; cp -a "$TPL/pgbr3" "$R/pgbr3"
rss "pgbackrest archive-push posix zst, sync, one segment" \
    pgbackrest --config="$WORK/pgbr3/pgbackrest.conf" --stanza=bench archive-push "$CW"
if [ "$S3" = 1 ]; then
    as_pg $S3DEL walpush "$COLD"
    rss "wal-push s3://, one cold segment" "$WAL_PUSH" --config "$WORK/wp-s3.toml" "$CW"
    as_pg $S3DEL pgbr "$COLD"
    rss "pgbackrest archive-push s3 zst, sync, one segment" \
        pgbackrest --config="$WORK/pgbrs3/pgbackrest.conf" --stanza=bench archive-push "$CW"
fi
# wal-fetch (repo wp-ahead holds all K segments)
mkdir -p "$WORK/restore/pg_wal"
chown -R postgres:postgres "$WORK/restore"
walpush_conf "$WORK/wf0.toml" "file://$R/wp-ahead" "$SP/wf0" push_concurrency=2 fetch_prefetch=0
walpush_conf "$WORK/wf8.toml" "file://$R/wp-ahead" "$SP/wf8" push_concurrency=2 fetch_prefetch=8
rss "wal-fetch file://, one segment, prefetch off" \
    "$WAL_FETCH" --config "$WORK/wf0.toml" "${SEGS[1]}" "$WORK/restore/pg_wal/RECOVERYXLOG"
rss "wal-fetch file://, one segment, prefetch 8 (foreground process only)" \
    "$WAL_FETCH" --config "$WORK/wf8.toml" "${SEGS[1]}" "$WORK/restore/pg_wal/RECOVERYXLOG"
# the prefetch worker it started: wait for it to finish, then run one ourselves to measure it
for _ in $(seq 1 100); do pgrep -f "config $WORK/wf8.toml" >/dev/null || break; sleep 0.1; done
# empty the prefetch queue (whatever its file naming) but keep the 'wanted' marker, so the worker has work
PREF_BEFORE=$(find "$SP/wf8/fetch" -type f ! -name wanted ! -name '*.lock' | wc -l)
find "$SP/wf8/fetch" -type f ! -name wanted ! -name '*.lock' -delete
rss "wal-fetch --prefetch-worker file:// (fetches up to 8, exits after 2 s idle)" \
    "$WAL_FETCH" --config "$WORK/wf8.toml" --prefetch-worker
if [ "$S3" = 1 ]; then
    walpush_conf "$WORK/wfs3.toml" "s3://walpush/lat" "$SP/wfs3" push_concurrency=2 fetch_prefetch=0
    rss "wal-fetch s3://, one segment, prefetch off" \
        "$WAL_FETCH" --config "$WORK/wfs3.toml" "${SEGS[0]}" "$WORK/restore/pg_wal/RECOVERYXLOG"
fi
rss "pgbackrest archive-get posix, sync, one segment" \
    pgbackrest --config="$WORK/pgbr3/pgbackrest.conf" --stanza=bench archive-get "$COLD" \
    "$WORK/restore/pg_wal/RECOVERYXLOG"

# ---- report
{
    echo
    echo "### wal_push_latency: $(date -u +%FT%TZ), $(nproc) cores, binaries from $ROOT ($BIN_REV)"
    echo "cold segment: $COLD (16 MiB of pgbench WAL, zstd -1 ratio $(awk "BEGIN {printf \"%.2f\", $SEG / $COLD_Z}")); wal-push compression_level ${WALPUSH_LEVEL:-1}, push_concurrency 2"
    python3 "$BENCH_DIR/hf_table.py" "one cold segment, file:// / posix repository (fresh repo each run)" "$J/cold.json"
    [ "$S3" = 1 ] && python3 "$BENCH_DIR/hf_table.py" "one cold segment, S3 on loopback ($S3_SERVER)" "$J/s3.json"
    python3 "$BENCH_DIR/hf_table.py" "segment already pushed ahead (the call PostgreSQL makes after look-ahead); first call with look-ahead" "$J/fast.json"
    echo
    echo "first wal-push call with $((K - 1)) more .ready segments (pushes them ahead): $AHEAD_FIRST_S (m:ss.cc), $NREC records left"
    echo "prefetch worker had fetched $PREF_BEFORE file(s) into the spool before the measured worker run"
    echo
    echo "== peak RSS"
    printf '%-72s %8s %10s %9s\n' "case" "max MiB" "wall" "cpu s"
    printf -- '-%.0s' $(seq 1 92); echo
    printf '%s\n' "${RSS_ROWS[@]}"
    echo
    echo "compressed size of one segment: wal-push level ${WALPUSH_LEVEL:-1}: $(du -b "$R/wp-empty" -s | cut -f1) bytes (whole repo incl. metadata)," \
        "pgBackRest zst default: $(find "$R/pgbr3/archive" -name "$COLD*" -printf '%s') bytes"
    echo "total time: $(($(date +%s) - T0)) s"
} | tee "$WORK/report.txt"
mkdir -p "$BENCH_DIR/results" && cp "$WORK/report.txt" "$BENCH_DIR/results/wal_push_latency-$(date +%Y%m%d-%H%M%S).txt"
