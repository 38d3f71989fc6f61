#!/usr/bin/env bash
# The main job on the embedded default (a local file:// repository), end to end:
#   a throwaway PostgreSQL cluster archives its WAL through wal-push, a copy taken with pg_basebackup
#   (without WAL) recovers by replaying every segment through wal-fetch, and the recovered data is compared.
# Usage: bash scripts/demo.sh            (as root: the cluster runs as the postgres OS user)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then
    echo "demo: PostgreSQL server binaries not found; run: bash scripts/setup.sh" >&2
    exit 1
fi

echo "== building backupctl (release)"
cargo build --release --locked --bins -q

WORK=$(mktemp -d /tmp/backupctl-demo.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/bin" "$WORK/repo" "$WORK/spool" "$WORK/restore-spool"
cp target/release/wal-push target/release/wal-fetch target/release/backupctl "$WORK/bin/"
chown -R postgres:postgres "$WORK"
PORT=$((20000 + RANDOM % 20000))
RPORT=$((PORT + 1))
as_pg() { runuser -u postgres -- "$@"; }
cleanup() {
    as_pg "$PG_BIN/pg_ctl" -D "$WORK/restored" -m immediate stop >/dev/null 2>&1 || true
    as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

cat > "$WORK/backupctl.toml" <<EOF
[repository]
url = "file://$WORK/repo"
[spool]
path = "$WORK/spool"
EOF
sed "s#$WORK/spool#$WORK/restore-spool#" "$WORK/backupctl.toml" > "$WORK/restore.toml"
chown postgres:postgres "$WORK"/*.toml

echo "== initdb and start a cluster archiving through wal-push (port $PORT)"
as_pg "$PG_BIN/initdb" -D "$WORK/data" -A trust -U postgres --no-sync >/dev/null
cat >> "$WORK/data/postgresql.conf" <<EOF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$WORK'
wal_level = replica
archive_mode = on
archive_command = '$WORK/bin/wal-push --config $WORK/backupctl.toml %p'
max_wal_size = '1GB'
EOF
as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/data.log" -w start >/dev/null
PSQL=(psql -X -A -t -q -h "$WORK" -p "$PORT" -U postgres -d postgres)

echo "== base backup without WAL (pg_basebackup -X none): recovery will need every segment from the archive"
as_pg "$PG_BIN/pg_basebackup" -h "$WORK" -p "$PORT" -U postgres -D "$WORK/restored" -X none -c fast

echo "== writing data (pgbench -i -s 10, then 2000 transactions)"
as_pg "$PG_BIN/pgbench" -h "$WORK" -p "$PORT" -U postgres -i -s 10 -q postgres >/dev/null 2>&1
as_pg "$PG_BIN/pgbench" -h "$WORK" -p "$PORT" -U postgres -t 2000 -c 2 postgres >/dev/null 2>&1
EXPECTED=$("${PSQL[@]}" -c "select count(*) || ' rows, sum(abalance) ' || sum(abalance) from pgbench_accounts")
LAST=$("${PSQL[@]}" -c "select pg_walfile_name(pg_switch_wal())")
echo "   source: $EXPECTED; waiting for $LAST to be archived"
for _ in $(seq 1 600); do
    DONE=$("${PSQL[@]}" -c "select coalesce(last_archived_wal, '') from pg_stat_archiver")
    [[ "$DONE" > "$LAST" || "$DONE" == "$LAST" ]] && break
    sleep 0.2
done
"${PSQL[@]}" -c "select '   archiver: ' || archived_count || ' archived, ' || failed_count || ' failed' from pg_stat_archiver"
as_pg "$WORK/bin/backupctl" --config "$WORK/backupctl.toml" status | sed 's/^/   /'

echo "== recovering the copy through wal-fetch (port $RPORT)"
cat >> "$WORK/restored/postgresql.auto.conf" <<EOF
restore_command = '$WORK/bin/wal-fetch --config $WORK/restore.toml %f %p'
recovery_target_action = 'promote'
archive_mode = off
port = $RPORT
EOF
as_pg touch "$WORK/restored/recovery.signal"
START=$(date +%s.%N)
as_pg "$PG_BIN/pg_ctl" -D "$WORK/restored" -l "$WORK/restored.log" -w -t 600 start >/dev/null
RPSQL=(psql -X -A -t -q -h "$WORK" -p "$RPORT" -U postgres -d postgres)
for _ in $(seq 1 3000); do
    [ "$("${RPSQL[@]}" -c 'select pg_is_in_recovery()' 2>/dev/null)" = "f" ] && break
    sleep 0.2
done
END=$(date +%s.%N)
GOT=$("${RPSQL[@]}" -c "select count(*) || ' rows, sum(abalance) ' || sum(abalance) from pgbench_accounts")
RESTORED=$(grep -c 'restored log file' "$WORK/restored.log" || true)
printf '   restored: %s\n   recovery replayed %s segments through wal-fetch in %s s\n' "$GOT" "$RESTORED" "$(awk "BEGIN { printf \"%.1f\", $END - $START }")"
if [ "$GOT" = "$EXPECTED" ]; then
    echo "OK: the recovered cluster matches the source"
else
    echo "FAILED: expected '$EXPECTED', got '$GOT' (logs in $WORK)" >&2
    trap - EXIT
    exit 1
fi
rm -rf "$WORK"
