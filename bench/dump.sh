#!/usr/bin/env bash
# Logical dumps (issue 12): `backupctl dump` (pg_dump -Fc -Z0 streamed into zstd frames in packs) vs
# `pg_dump -Fc | gzip` (what the product description used) on the same pgbench database; and restore:
# `backupctl dump-restore` (fetch, verify, pg_restore --single-transaction) vs `gunzip | pg_restore`.
# Wall time and stored bytes, median of RUNS runs, the two tools alternating. Run as root.
#
#   SCALE=20 EVENTS=2000000 RUNS=3 bash bench/dump.sh        BACKUPCTL=path/to/backupctl (default: target/release, else debug)
set -euo pipefail
SCALE=${SCALE:-20}
RUNS=${RUNS:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BACKUPCTL:-}
if [ -z "$BIN" ]; then
    BIN=$ROOT/target/release/backupctl
    [ -x "$BIN" ] || BIN=$ROOT/target/debug/backupctl
fi
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
WORK=$(mktemp -d /tmp/backupctl-bench-dump-XXXXXX)
chmod 755 "$WORK"
cp "$BIN" "$WORK/backupctl"
chown -R postgres: "$WORK"
PORT=$((20000 + RANDOM % 20000))
as_pg() { runuser -u postgres -- "$@"; }
cleanup() {
    as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -m immediate -w stop >/dev/null 2>&1 || true
    [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT
as_pg "$PGBIN/initdb" -A trust -U postgres --no-sync -D "$WORK/data" >/dev/null
printf "port = %s\nlisten_addresses = ''\nunix_socket_directories = '%s'\nfsync = off\n" "$PORT" "$WORK" \
    >>"$WORK/data/postgresql.conf"
as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w start >/dev/null
PSQL=(psql -X -q -h "$WORK" -p "$PORT" -U postgres)
"${PSQL[@]}" -c "create database bench" postgres
as_pg "$PGBIN/pgbench" -q -i -s "$SCALE" -h "$WORK" -p "$PORT" -U postgres bench >/dev/null 2>&1
# pgbench's tables are degenerate for compressors (blank filler, sequential keys); EVENTS rows of a table shaped
# like an application's (timestamps, ids, hex tokens, short text, numbers) make the sizes say something.
EVENTS=${EVENTS:-2000000}
if [ "$EVENTS" -gt 0 ]; then
    "${PSQL[@]}" -c "create table events as select g as id, timestamptz '2026-01-01' + g * interval '13 seconds' as at,
        (random() * 100000)::int as user_id, md5(random()::text) as token,
        (array['login','logout','view','purchase','error'])[1 + (g % 5)] || ' ' || repeat('x', (random() * 40)::int) as note,
        round((random() * 1000)::numeric, 2) as amount from generate_series(1, $EVENTS) g" bench
fi
DBSIZE=$("${PSQL[@]}" -At -c "select pg_database_size('bench')" postgres)
now_ms() { date +%s%3N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
: >"$WORK/bc_dump" >"$WORK/bc_size" >"$WORK/bc_restore" >"$WORK/gz_dump" >"$WORK/gz_size" >"$WORK/gz_restore"
for run in $(seq 1 "$RUNS"); do
    repo=$WORK/repo-$run
    mkdir -p "$repo" "$WORK/spool-$run"
    chown postgres: "$repo" "$WORK/spool-$run"
    cfg=$WORK/cfg-$run.toml
    printf '[repository]\nurl = "file://%s"\n[spool]\npath = "%s"\n[postgres]\nhost = "%s"\nport = %s\n' \
        "$repo" "$WORK/spool-$run" "$WORK" "$PORT" >"$cfg"
    chmod 644 "$cfg"
    as_pg "$WORK/backupctl" --config "$cfg" init >/dev/null
    t=$(now_ms)
    id=$(as_pg "$WORK/backupctl" --config "$cfg" dump --database bench --json-output 2>/dev/null \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    echo $(($(now_ms) - t)) >>"$WORK/bc_dump"
    du -sb "$repo" | cut -f1 >>"$WORK/bc_size"
    t=$(now_ms)
    "$PGBIN/pg_dump" -Fc -h "$WORK" -p "$PORT" -U postgres bench | gzip >"$WORK/bench-$run.dump.gz"
    echo $(($(now_ms) - t)) >>"$WORK/gz_dump"
    stat -c %s "$WORK/bench-$run.dump.gz" >>"$WORK/gz_size"
    t=$(now_ms)
    as_pg "$WORK/backupctl" --config "$cfg" dump-restore --backup-id "$id" --database bench \
        --target-database "r_bc_$run" >/dev/null 2>&1
    echo $(($(now_ms) - t)) >>"$WORK/bc_restore"
    t=$(now_ms)
    "${PSQL[@]}" -c "create database r_gz_$run template template0" postgres
    gunzip -c "$WORK/bench-$run.dump.gz" | "$PGBIN/pg_restore" --single-transaction --exit-on-error \
        -h "$WORK" -p "$PORT" -U postgres -d "r_gz_$run"
    echo $(($(now_ms) - t)) >>"$WORK/gz_restore"
    for db in "r_bc_$run" "r_gz_$run"; do
        n=$("${PSQL[@]}" -At -c "select count(*) from pgbench_accounts" "$db")
        [ "$n" = $((SCALE * 100000)) ] || { echo "restore into $db has $n rows" >&2; exit 1; }
        "${PSQL[@]}" -c "drop database $db" postgres
    done
    rm -f "$WORK/bench-$run.dump.gz"
done
echo "pgbench scale $SCALE + $EVENTS events rows (database $((DBSIZE / 1048576)) MiB), median of $RUNS runs, $(basename "$BIN") from ${BIN#"$ROOT"/}"
printf '| %-34s | %10s | %12s | %11s |\n' tool "dump (s)" "stored (MiB)" "restore (s)"
printf '|%s|%s|%s|%s|\n' ------------------------------------ ------------ -------------- -------------
row() {
    printf '| %-34s | %10.2f | %12.1f | %11.2f |\n' "$1" "$(echo "$(median <"$WORK/$2_dump") / 1000" | bc -l)" \
        "$(echo "$(median <"$WORK/$2_size") / 1048576" | bc -l)" "$(echo "$(median <"$WORK/$2_restore") / 1000" | bc -l)"
}
row "backupctl dump (file://)" bc
row "pg_dump -Fc | gzip" gz
