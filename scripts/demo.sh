#!/usr/bin/env bash
# The main job on the embedded default (a local file:// repository), end to end:
#   a throwaway PostgreSQL cluster archives its WAL through wal-push; base-backup takes a full and then an
#   incremental base backup; pgbench writes, a point in time is noted, pgbench writes more; pitr-restore
#   restores to that time (and, separately, to the end of the archive) into new directories, each copy is
#   started on its own port, recovers through wal-fetch, and is compared with what the source held.
# Usage: bash scripts/demo.sh            (as root: the clusters run as the postgres OS user)
#        DEMO_BIN=/usr/bin bash scripts/demo.sh   runs the installed programs (the Debian package) instead of
#        building them (scripts/package-test.sh does this)
# Exit status: 0 if every copy matches the source, 1 otherwise (the work directory is then kept for inspection).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
find_pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
PG_BIN=${PG_BIN:-$(find_pg_bin)}
if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ] || ! command -v psql >/dev/null 2>&1; then
    # A fresh Debian machine: install PostgreSQL (the server binaries, psql, pgbench) from Debian.
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "demo: PostgreSQL server binaries not found; run as root: bash scripts/setup.sh" >&2
        exit 1
    fi
    echo "== installing PostgreSQL from Debian (apt-get install postgresql)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-client >/dev/null
    PG_BIN=$(find_pg_bin)
fi
if ! id postgres >/dev/null 2>&1; then
    echo "demo: the postgres OS user is missing; run: bash scripts/setup.sh" >&2
    exit 1
fi
DEMO_BIN=${DEMO_BIN:-}
if [ -z "$DEMO_BIN" ]; then
    command -v cargo >/dev/null 2>&1 || { echo "demo: cargo not found; install Rust (https://rustup.rs)" >&2; exit 1; }
    echo "== building backupctl (release)"
    cargo build --release --locked --bins -q
fi

WORK=$(mktemp -d /tmp/backupctl-demo.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/bin" "$WORK/repo" "$WORK/spool" "$WORK/spool-pitr" "$WORK/spool-latest"
# cargo's target directory: ./target unless CARGO_TARGET_DIR moves it
[ -n "$DEMO_BIN" ] || for b in wal-push wal-fetch base-backup pitr-restore backupctl; do
    cp "${CARGO_TARGET_DIR:-target}/release/$b" "$WORK/bin/" || { rm -rf "$WORK"; exit 1; }
done
chown -R postgres:postgres "$WORK"
if [ -n "$DEMO_BIN" ]; then
    # The installed programs themselves (made after the chown, which must not reach them).
    for b in wal-push wal-fetch base-backup pitr-restore backupctl; do ln -s "$DEMO_BIN/$b" "$WORK/bin/$b"; done
    echo "== using the installed programs in $DEMO_BIN ($("$DEMO_BIN/backupctl" --version))"
fi
PORT=$((20000 + RANDOM % 20000))
PITR_PORT=$((PORT + 1))
LATEST_PORT=$((PORT + 2))
as_pg() { runuser -u postgres -- "$@"; }
cleanup() {
    for d in restored-latest restored-pitr data; do
        as_pg "$PG_BIN/pg_ctl" -D "$WORK/$d" -m immediate stop >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT
fail() {
    echo "FAILED: $* (logs and data directories kept in $WORK)" >&2
    cleanup
    trap - EXIT
    exit 1
}

# One configuration for the source (base-backup connects through [postgres]); each restored copy gets the same
# repository with a spool of its own (a spool is never shared between clusters).
cat > "$WORK/backupctl.toml" <<EOF
[repository]
url = "file://$WORK/repo"

[spool]
path = "$WORK/spool"

[postgres]
host = "$WORK"          # the Unix-socket directory
port = $PORT
user = "postgres"
EOF
for copy in pitr latest; do
    printf '[repository]\nurl = "file://%s/repo"\n\n[spool]\npath = "%s/spool-%s"\n' "$WORK" "$WORK" "$copy" \
        > "$WORK/restore-$copy.toml"
done
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
pgbench() {
    as_pg "$PG_BIN/pgbench" -h "$WORK" -p "$PORT" -U postgres "$@" postgres >"$WORK/pgbench.log" 2>&1 \
        || fail "pgbench $* (see $WORK/pgbench.log)"
}
# What a cluster holds: pgbench's tables summed up, plus a digest of every account balance.
FINGERPRINT="select (select count(*) from pgbench_history) || ' transactions, '
    || (select count(*) from pgbench_accounts) || ' accounts, sum(abalance) '
    || (select sum(abalance) from pgbench_accounts)
    || ', md5 ' || (select left(md5(string_agg(aid || ':' || abalance, ',' order by aid)), 12) from pgbench_accounts)"
# A field of base-backup's one-line JSON summary.
json_field() { sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\).*/\1/p"; }
base_backup() {
    local out
    out=$(as_pg "$WORK/bin/base-backup" --config "$WORK/backupctl.toml" --fast --json "$@") || fail "base-backup $*"
    printf '   backup %s (%s): %s files, %s read, %s added to the repository (%s rewritten), %s reused, %s ms\n' \
        "$(json_field id <<<"$out")" "$(json_field type <<<"$out")" "$(json_field files <<<"$out")" \
        "$(numfmt --to=iec-i --suffix=B "$(json_field bytes <<<"$out")")" \
        "$(numfmt --to=iec-i --suffix=B "$(json_field bytes_new <<<"$out")")" \
        "$(numfmt --to=iec-i --suffix=B "$(json_field bytes_rewritten <<<"$out")")" \
        "$(numfmt --to=iec-i --suffix=B "$(json_field bytes_reused <<<"$out")")" "$(json_field duration_ms <<<"$out")"
}
wait_archived() {
    local last done
    last=$("${PSQL[@]}" -c "select pg_walfile_name(pg_switch_wal())")
    for _ in $(seq 1 600); do
        done=$("${PSQL[@]}" -c "select coalesce(last_archived_wal, '') from pg_stat_archiver")
        [[ "$done" > "$last" || "$done" == "$last" ]] && return 0
        sleep 0.2
    done
    fail "WAL segment $last was not archived within 120 s (see $WORK/data.log)"
}

echo "== pgbench -i -s 10, then a full base backup (base-backup --type full --fast)"
pgbench -i -s 10 -q
base_backup --type full

echo "== 1000 pgbench transactions, then an incremental base backup (stores only the pages that changed, most"
echo "   as deltas against their previous copy)"
pgbench -n -t 500 -c 2
base_backup --type incremental

echo "== 1000 more transactions, then note the time"
pgbench -n -t 500 -c 2
sleep 1
EXPECTED_PITR=$("${PSQL[@]}" -c "$FINGERPRINT")
# RFC 3339 with a Z, as a monitoring system would print it; pitr-restore converts it for PostgreSQL.
TARGET=$("${PSQL[@]}" -c "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
sleep 1
echo "   $TARGET: $EXPECTED_PITR"

echo "== 2000 more transactions after that time (the restore to $TARGET must not contain them)"
pgbench -n -t 1000 -c 2
EXPECTED_LATEST=$("${PSQL[@]}" -c "$FINGERPRINT")
echo "   now: $EXPECTED_LATEST"
wait_archived
"${PSQL[@]}" -c "select '   archiver: ' || archived_count || ' archived, ' || failed_count || ' failed'
    from pg_stat_archiver"
as_pg "$WORK/bin/backupctl" --config "$WORK/backupctl.toml" status | sed 's/^/   /'

# Restore into a new directory as the postgres user, start the copy on its own port, wait for the end of recovery,
# and compare what it holds with what the source held.
restore_and_check() {
    local name=$1 port=$2 expected=$3 what=$4
    shift 4
    local dir="$WORK/restored-$name"
    echo "== pitr-restore --destination $dir --archive-mode off${*:+ $*}"
    as_pg "$WORK/bin/pitr-restore" --config "$WORK/restore-$name.toml" --destination "$dir" \
        --archive-mode off "$@" || fail "pitr-restore $*"
    grep -E '^(restore_command|recovery_target_time|archive_mode) ' "$dir/postgresql.auto.conf" \
        | sed 's/^/   auto.conf: /'
    echo "== starting the restored copy on port $port: PostgreSQL replays the archive through wal-fetch"
    local start end
    start=$(date +%s.%N)
    # The copy carries the source's postgresql.conf (port included): override the port on the command line.
    as_pg "$PG_BIN/pg_ctl" -D "$dir" -l "$WORK/restored-$name.log" -o "-p $port" -w -t 600 start >/dev/null \
        || fail "the restored copy did not start (see $WORK/restored-$name.log)"
    local rpsql=(psql -X -A -t -q -h "$WORK" -p "$port" -U postgres -d postgres)
    for _ in $(seq 1 3000); do
        [ "$("${rpsql[@]}" -c 'select pg_is_in_recovery()' 2>/dev/null)" = "f" ] && break
        as_pg "$PG_BIN/pg_ctl" -D "$dir" status >/dev/null \
            || fail "the restored copy stopped during recovery (see $WORK/restored-$name.log)"
        sleep 0.2
    done
    end=$(date +%s.%N)
    [ "$("${rpsql[@]}" -c 'select pg_is_in_recovery()')" = "f" ] || fail "recovery of $name did not finish"
    grep -E 'starting point-in-time recovery|recovery stopping|last completed transaction|selected new timeline' \
        "$WORK/restored-$name.log" | sed 's/^.*\(LOG\|FATAL\): */   log: /'
    local got segments
    got=$("${rpsql[@]}" -c "$FINGERPRINT")
    segments=$(grep -c 'restored log file' "$WORK/restored-$name.log" || true)
    printf '   restored: %s\n   source:   %s\n   (%s WAL files replayed through wal-fetch in %s s)\n' \
        "$got" "$expected" "$segments" "$(awk "BEGIN { printf \"%.1f\", $end - $start }")"
    [ "$got" = "$expected" ] \
        || fail "the copy restored to $what differs from the source: expected '$expected', got '$got'"
    echo "OK: the copy restored to $what matches the source"
    as_pg "$PG_BIN/pg_ctl" -D "$dir" -m fast stop >/dev/null
}

restore_and_check pitr "$PITR_PORT" "$EXPECTED_PITR" "$TARGET" --to "$TARGET"
restore_and_check latest "$LATEST_PORT" "$EXPECTED_LATEST" "the end of the archive"

echo "OK: both restored clusters match the source (point in time $TARGET, and latest)"
cleanup
trap - EXIT
rm -rf "$WORK"
