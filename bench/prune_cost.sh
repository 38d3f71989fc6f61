#!/usr/bin/env bash
# The cost of a prune on S3: what deleting the oldest of 7 daily backups frees, and what it costs in requests
# (objects read, written, listed, deleted), wall time and CPU, for base-backup's repository format 2 next to
# pgBackRest's expire. S3 is bench/s3server on loopback (S3_SERVER=s3s, the only server that counts requests;
# pgBackRest reaches it through stunnel). Each run, in fresh repositories (prefix run<N>/ of buckets bbs3, pgbr):
#   day 1     base-backup --type full  and  pgbackrest backup --type=full   (the source cluster archives every
#             segment into both repositories: archive_command = wal-push ... && pgbackrest archive-push ...)
#   day 2..7  a day of OLTP: pgbench -c DAY_CLIENTS -t DAY_TX (random accounts rows), then the first row of
#             RANDOM_PCT % of pgbench_accounts' pages chosen at random updated, VACUUM, CHECKPOINT; then
#             base-backup --type BB_TYPE (incremental)  and  pgbackrest backup --type=full
#   prune     backupctl prune with [retention] keep_last = 6, gc_grace = "0s" (prune deletes the oldest backup,
#             the WAL only it needed, then runs gc, which deletes and compacts packs), then backupctl gc again
#             (a gc with nothing to do: its fixed cost)
#   expire    pgbackrest expire --repo1-retention-full=6 (the oldest full and the WAL before the next one)
# Measured for each step: wall s, CPU s (/usr/bin/time -v), the S3 server's CPU, objects and bytes freed (the
# repository listed before and after, by top-level directory), requests by S3 operation and the bytes sent and
# received (bench/s3server's counters, GET /_bench/stats, for that tool's bucket only); for each backup what it
# added and its requests.
# Why incrementals for base-backup: they are what a DBA runs daily on format 2 (every backup restores on its own,
# no chain to manage), and the oldest backup is then the full whose frames the later backups' deltas and reused
# blocks still name: the case where a prune frees least and gc has most to compact. pgBackRest 2.45 takes fulls:
# its incremental of a pgbench database stores ~98% of a full anyway (bench/README.md), and an expire can only
# drop the oldest backup if nothing depends on it (BB_TYPE=full for base-backup fulls every day).
#
# Usage: bash bench/prune_cost.sh     (as root)
# Env:   SCALE=100  RUNS=1  DAYS=7  DAY_TX=5000  DAY_CLIENTS=2  RANDOM_PCT=2  BB_TYPE=incremental  PGBR=1
#        BB_PARALLEL=2  BB_LEVEL=1 (repository compression_level)  PGBR_PROCESS_MAX=2  PGBR_COMPRESS_LEVEL  KEEP=1
set -euo pipefail
export S3_SERVER=${S3_SERVER:-s3s}
source "$(dirname "$0")/lib.sh"
[ "$S3_SERVER" = s3s ] || die "prune_cost.sh needs S3_SERVER=s3s (bench/s3server counts the requests)"

SCALE=${SCALE:-100}
RUNS=${RUNS:-1}
DAYS=${DAYS:-7}
KEEP_N=$((DAYS - 1))
DAY_TX=${DAY_TX:-5000}
DAY_CLIENTS=${DAY_CLIENTS:-2}
RANDOM_PCT=${RANDOM_PCT:-2}
BB_TYPE=${BB_TYPE:-incremental}
PGBR=${PGBR:-1}
export REPO_FORMAT=2
BB_PARALLEL=${BB_PARALLEL:-2}
BB_LEVEL=${BB_LEVEL:-1}
PGBR_PROCESS_MAX=${PGBR_PROCESS_MAX:-2}
[ "$DAYS" -ge 2 ] || die "DAYS must be at least 2"

bench_start prune_cost
[ -x "$BASE_BACKUP" ] && [ -x "$BACKUPCTL" ] || die "base-backup / backupctl were not built"

PORT=$(free_port)
SRC=$WORK/src
RESULTS=$WORK/results.tsv
: > "$RESULTS"
mkdir -p "$WORK/spools" "$WORK/out"
s3_start
[ "$PGBR" = 1 ] && stunnel_start
s3_bucket bbs3
s3_bucket pgbr
chown -R postgres:postgres "$WORK"

pgbench_source "$SRC" "$PORT" "$SCALE"
sql "$PORT" "create table bench_tick(t timestamptz)" >/dev/null
DBSIZE=$(sql "$PORT" "select pg_database_size('postgres')")
log "database: $((DBSIZE / 1048576)) MiB"

# usage_json BUCKET PREFIX: {"<top-level directory>": [objects, bytes], ...} of the objects under PREFIX/
usage_json() {
    python3 - "$S3_PORT" "$1" "$2" <<'EOF'
import json, sys, boto3
port, bucket, prefix = sys.argv[1:]
c = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
out = {}
for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
    for o in page.get("Contents", []):
        rest = o["Key"][len(prefix) + 1:]
        top = rest.split("/", 1)[0] if "/" in rest else rest
        n, b = out.get(top, (0, 0))
        out[top] = (n + 1, b + o["Size"])
print(json.dumps(out))
EOF
}

# step TAG TOOL(bb|pgbr) BUCKET PREFIX CMD...: one timed command with the repository's usage and the S3 server's
# counters saved before and after ($WORK/out/TAG.{usage0,usage1,stats0,stats1}); appends a line to $RESULTS
step() {
    local tag=$1 tool=$2 bucket=$3 prefix=$4 rc=0
    shift 4
    usage_json "$bucket" "$prefix" > "$WORK/out/$tag.usage0"
    s3_stats > "$WORK/out/$tag.stats0"
    timed "$tag" "$@" || rc=$?
    s3_stats > "$WORK/out/$tag.stats1"
    usage_json "$bucket" "$prefix" > "$WORK/out/$tag.usage1"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$tag" "$tool" "$bucket" "$T_SECS" "$T_CPU" "$T_RSS" "$T_SRV" "$rc" \
        >> "$RESULTS"
    local req
    req=$(s3_stats_diff "$WORK/out/$tag.stats0" "$WORK/out/$tag.stats1" "$bucket" | awk '$1 != "total" {printf "%s %s, ", $1, $2}')
    log "  $tag: exit $rc, $T_SECS s, CPU $T_CPU s, RSS $T_RSS MiB, S3 server CPU $T_SRV s; requests: ${req%, }"
    return "$rc"
}

day_load() {
    local d=$1
    log "day $d: pgbench -c $DAY_CLIENTS -t $DAY_TX, $RANDOM_PCT % of pgbench_accounts' pages updated at random, VACUUM"
    as_pg "$PG_BIN/pgbench" -h "$WORK" -p "$PORT" -U postgres -n -c "$DAY_CLIENTS" -j "$DAY_CLIENTS" -t "$DAY_TX" \
        postgres >"$WORK/out/pgbench-$run-$d.log" 2>&1 || { tail -5 "$WORK/out/pgbench-$run-$d.log"; die "pgbench failed"; }
    sql "$PORT" "update pgbench_accounts set abalance = abalance + 1 where ctid = any(array(select ('(' || p || ',1)')::tid
        from (select p from generate_series(0, (pg_relation_size('pgbench_accounts') / 8192)::int - 1) p
        order by random() limit (pg_relation_size('pgbench_accounts') / 8192 * $RANDOM_PCT / 100)::int) s))" >/dev/null
    sql "$PORT" "vacuum" >/dev/null
    sql "$PORT" "checkpoint" >/dev/null
}

for run in $(seq 1 "$RUNS"); do
    BB_CONF=$WORK/bb-$run.toml
    WALPUSH_LEVEL=$BB_LEVEL walpush_conf "$BB_CONF" "s3://bbs3/run$run" "$WORK/spools/bb-$run" push_concurrency=2 \
        "[postgres]" "host = \"$WORK\"" "port = $PORT" 'user = "postgres"' \
        "[backup]" "parallel = $BB_PARALLEL" "archive_timeout_seconds = 600" \
        "[retention]" "keep_last = $KEEP_N" 'gc_grace = "0s"'
    archive="$WAL_PUSH --config $BB_CONF %p"
    if [ "$PGBR" = 1 ]; then
        PGBR_DIR=$WORK/pgbr-$run
        mkdir -p "$PGBR_DIR"
        PGBR_CONF=$PGBR_DIR/pgbackrest.conf
        pgbr_conf "$PGBR_CONF" s3 "/run$run" "$SRC" "$PORT" "process-max=$PGBR_PROCESS_MAX" "archive-timeout=600"
        chown -R postgres:postgres "$PGBR_DIR"
        as_pg pgbackrest --config="$PGBR_CONF" --stanza=bench stanza-create >"$PGBR_DIR/stanza.log" 2>&1 \
            || { cat "$PGBR_DIR/stanza.log"; die "pgbackrest stanza-create failed"; }
        archive="$archive && pgbackrest --config=$PGBR_CONF --stanza=bench archive-push %p"
    fi
    set_archive "$archive"
    if [ "$PGBR" = 1 ]; then
        as_pg pgbackrest --config="$PGBR_CONF" --stanza=bench check >"$PGBR_DIR/check.log" 2>&1 \
            || { cat "$PGBR_DIR/check.log"; die "pgbackrest check failed"; }
    fi
    for d in $(seq 1 "$DAYS"); do
        [ "$d" -gt 1 ] && day_load "$d"
        type=$BB_TYPE
        [ "$d" = 1 ] && type=full
        for t in $(in_order "$d" bb pgbr); do
            if [ "$t" = bb ]; then
                step "backup-bb-$run-$d" bb bbs3 "run$run" "$BASE_BACKUP" --config "$BB_CONF" --type "$type" --fast --json \
                    || die "base-backup failed (day $d)"
            elif [ "$PGBR" = 1 ]; then
                # retention on the command line: pgbr_conf's repo1-retention-full=1 would expire at every backup
                step "backup-pgbr-$run-$d" pgbr pgbr "run$run" pgbackrest --config="$PGBR_CONF" --stanza=bench \
                    --repo1-retention-full="$DAYS" --type=full --start-fast backup || die "pgbackrest backup failed (day $d)"
            fi
        done
    done
    # every segment the last backups need is archived before anything is deleted (nothing else writes meanwhile)
    switch_and_wait
    for t in $(in_order "$run" bb pgbr); do
        if [ "$t" = bb ]; then
            log "run $run: backupctl prune (keep_last = $KEEP_N, gc_grace 0s), then gc again"
            step "prune-bb-$run" bb bbs3 "run$run" "$BACKUPCTL" prune --config "$BB_CONF" --json-output \
                || die "backupctl prune failed"
            step "gc-bb-$run" bb bbs3 "run$run" "$BACKUPCTL" gc --config "$BB_CONF" --json-output \
                || die "backupctl gc failed"
        elif [ "$PGBR" = 1 ]; then
            log "run $run: pgbackrest expire --repo1-retention-full=$KEEP_N"
            step "expire-pgbr-$run" pgbr pgbr "run$run" pgbackrest --config="$PGBR_CONF" --stanza=bench \
                --repo1-retention-full="$KEEP_N" expire || die "pgbackrest expire failed"
        fi
    done
    sql "$PORT" "alter system set archive_command = '/bin/true'" >/dev/null
    sql "$PORT" "select pg_reload_conf()" >/dev/null
done
s3_stop

# ---------------------------------------------------------------------------------------------------------------
{
    echo
    echo "### prune_cost: $(date -u +%FT%TZ), $(nproc) cores, pgbench scale $SCALE (database $((DBSIZE / 1048576)) MiB)," \
        "$RUNS run(s), binaries from $ROOT ($BIN_REV)"
    echo "$DAYS daily backups: base-backup format 2 (full, then --type $BB_TYPE; [backup] parallel $BB_PARALLEL, zstd level" \
        "$BB_LEVEL)$([ "$PGBR" = 1 ] && echo "; pgBackRest $(pgbackrest version | awk '{print $2}') fulls (process-max" \
        "$PGBR_PROCESS_MAX, zst level ${PGBR_COMPRESS_LEVEL:-default 3}), through stunnel")"
    echo "a day: pgbench -n -c $DAY_CLIENTS -t $DAY_TX, the first row of $RANDOM_PCT % of pgbench_accounts' pages updated at" \
        "random, VACUUM, CHECKPOINT; S3: bench/s3server on loopback; prune keeps $KEEP_N (keep_last), gc_grace 0s"
    python3 - "$RESULTS" "$WORK/out" "$DAYS" <<'EOF'
import json, os, statistics, sys
results, out, days = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = [l.rstrip("\n").split("\t") for l in open(results) if l.strip()]
def load(tag, ext):
    return json.load(open(os.path.join(out, f"{tag}.{ext}")))
def usage_delta(tag):
    a, b = load(tag, "usage0"), load(tag, "usage1")
    return {k: (b.get(k, (0, 0))[0] - a.get(k, (0, 0))[0], b.get(k, (0, 0))[1] - a.get(k, (0, 0))[1]) for k in set(a) | set(b)}
def reqs(tag, bucket):
    a, b = load(tag, "stats0")["buckets"].get(bucket, {"ops": {}}), load(tag, "stats1")["buckets"].get(bucket, {"ops": {}})
    zero = {"requests": 0, "bytes_in": 0, "bytes_out": 0, "errors": 0}
    return {op: {k: b["ops"][op][k] - a["ops"].get(op, zero)[k] for k in zero} for op in b["ops"]
            if b["ops"][op]["requests"] - a["ops"].get(op, zero)["requests"]}
WAL = {"bb": {"wal"}, "pgbr": {"archive"}}
def split(tool, delta):
    data = [0, 0]; wal = [0, 0]
    for k, (n, b) in delta.items():
        t = wal if k in WAL[tool] else data
        t[0] += n; t[1] += b
    return data, wal
mib = lambda b: f"{b / 1048576:.1f}"
def reqline(r):
    short = {"GetObject": "GET", "GetObject (ranged)": "GET-range", "PutObject": "PUT", "DeleteObject": "DELETE",
             "DeleteObjects": "DeleteObjects", "ListObjectsV2": "LIST", "HeadObject": "HEAD"}
    return ", ".join(f"{short.get(op, op)} {v['requests']}" for op, v in sorted(r.items()))
print()
print("backups (median over runs): what each added to the repository (data = everything but WAL), its requests")
for tool in ("bb", "pgbr"):
    for d in range(1, days + 1):
        tags = [r for r in rows if r[0].startswith(f"backup-{tool}-") and r[0].endswith(f"-{d}") and r[7] == "0"]
        if not tags:
            continue
        secs = statistics.median(float(r[3]) for r in tags)
        added = statistics.median(split(tool, usage_delta(r[0]))[0][1] for r in tags)
        objs = statistics.median(split(tool, usage_delta(r[0]))[0][0] for r in tags)
        name = "base-backup" if tool == "bb" else "pgbackrest "
        print(f"  {name} day {d}: {secs:6.2f} s, +{mib(added):>7} MiB in {objs:5.0f} objects; requests: {reqline(reqs(tags[0][0], tags[0][2]))}")
print()
print("deleting the oldest backup (per run):")
hdr = f"{'step':<34} {'wall s':>7} {'CPU s':>6} {'S3 CPU':>6} {'freed data objs':>15} {'MiB':>8} {'freed WAL objs':>14} {'MiB':>8} {'requests':>8} {'MiB in':>7} {'MiB out':>7}"
print(hdr); print("-" * len(hdr))
detail = []
for r in rows:
    tag, tool, bucket, secs, cpu, rss, srv, rc = r
    if not (tag.startswith("prune-") or tag.startswith("gc-") or tag.startswith("expire-")):
        continue
    data, wal = split(tool, usage_delta(tag))
    rq = reqs(tag, bucket)
    n = sum(v["requests"] for v in rq.values())
    bi = sum(v["bytes_in"] for v in rq.values()); bo = sum(v["bytes_out"] for v in rq.values())
    name = {"prune": "backupctl prune (+ its gc)", "gc": "backupctl gc again", "expire": "pgbackrest expire"}[tag.split("-")[0]]
    name += f", run {tag.rsplit('-', 1)[1]}" + ("" if rc == "0" else f" (exit {rc})")
    print(f"{name:<34} {secs:>7} {cpu:>6} {srv:>6} {-data[0]:>15} {mib(-data[1]):>8} {-wal[0]:>14} {mib(-wal[1]):>8} {n:>8} {mib(bi):>7} {mib(bo):>7}")
    detail.append((name, rq, tag, tool))
print()
print("requests by S3 operation (count, MiB sent to / received from the server):")
for name, rq, tag, tool in detail:
    print(f"  {name}: " + "; ".join(f"{op} {v['requests']} ({mib(v['bytes_in'])} / {mib(v['bytes_out'])})" for op, v in sorted(rq.items())))
    if tool == "bb":
        try:
            rep = json.load(open(os.path.join(out, f"{tag}.out")))
            gc = rep.get("gc") if tag.startswith("prune-") else rep
            if tag.startswith("prune-"):
                print(f"    prune: deleted backups {[b.get('id') for b in rep.get('deleted_backups', [])]}, "
                      f"WAL files {rep.get('deleted_wal', {}).get('files')} ({mib(rep.get('deleted_wal', {}).get('bytes', 0))} MiB)")
            if gc:
                p = gc.get("packs", {})
                print(f"    gc: objects removed {gc.get('objects_removed')} ({mib(gc.get('bytes_removed', 0))} MiB); packs "
                      f"{p.get('packs')} ({mib(p.get('pack_bytes', 0))} MiB): deleted {p.get('packs_deleted')}, compacted "
                      f"{p.get('packs_compacted')} (frames copied {p.get('frames_copied')}, {p.get('read_requests')} ranged reads, "
                      f"{mib(p.get('bytes_read', 0))} MiB read, {p.get('packs_written')} packs + {p.get('index_written')} index "
                      f"objects written, {mib(p.get('bytes_written', 0))} MiB); nodes read {p.get('nodes_read')}, deleted "
                      f"{p.get('nodes_deleted')}; index read {p.get('index_read')}, deleted {p.get('index_deleted')}; "
                      f"deferred: {gc.get('deferred')}")
        except (OSError, ValueError) as e:
            print(f"    (no JSON report: {e})")
print()
print("repository before the prune / expire (run 1): ", end="")
for r in rows:
    if r[0] in ("prune-bb-1", "expire-pgbr-1"):
        data, wal = split(r[1], {k: tuple(v) for k, v in load(r[0], "usage0").items()})
        print(f"{'base-backup' if r[1] == 'bb' else 'pgBackRest'}: data {data[0]} objects {mib(data[1])} MiB, WAL {wal[0]} objects {mib(wal[1])} MiB; ", end="")
print()
EOF
    echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "(wall s / CPU s: the whole CLI call under /usr/bin/time -v, CPU = user + sys with children; S3 CPU: the"
    echo " server's CPU seconds meanwhile; freed: objects and bytes under the run's prefix before minus after, data ="
    echo " everything but WAL (base-backup: packs/ index/ maps/ backups/ locks/; pgBackRest: backup/), WAL = wal/ or"
    echo " archive/; requests: counted by bench/s3server for the tool's bucket; MiB in = request bodies sent to the"
    echo " server, MiB out = response bodies received from it)"
    echo "total time: $(($(date +%s) - T0)) s"
} | tee "$WORK/report.txt"
mkdir -p "$BENCH_DIR/results" && cp "$WORK/report.txt" "$BENCH_DIR/results/prune_cost-$(date +%Y%m%d-%H%M%S).txt"
