#!/usr/bin/env bash
# Verify: wall time, CPU, peak RSS of re-reading a whole repository (every backup and all archived WAL) with
# `backupctl verify --wal` next to `pgbackrest verify`, on a pgbench database (scale SCALE); then whether each
# notices one corrupted data file. Set up once, per tool, in file:// (pgBackRest: posix) and, with S3=1, in S3 on
# loopback (moto; pgBackRest through stunnel):
#   a full backup (base-backup --type full --fast / pgbackrest backup --type=full --start-fast), then an
#   incremental after `update pgbench_accounts ... where aid <= CHANGE_PCT % of the rows` + CHECKPOINT, with the
#   WAL archived all along by each tool's own archive_command (one archive_command chains them all, so every
#   repository holds the same segments).
# Then RUNS times, tools alternating which goes first:
#   verify    backupctl --config C verify --wal --json-output   vs   pgbackrest --stanza=bench --output=text verify
#             (exit status 0 and the tool's own verdict: JSON "ok": true / "status: ok")
# Then, untimed, file:// only: one byte flipped in the middle of the largest data file of each repository
# (backupctl: an object under data/, referenced by both backups; pgBackRest: a file of the full backup's pg_data/,
# which the incremental references), each tool's verify run again: detected = exit status non-zero and the report
# names the file. The byte is flipped back afterwards.
#
# Usage: bash bench/verify.sh     (as root)
# Env:   SCALE=100  RUNS=3  S3=1  CHANGE_PCT=3  VERIFY_PARALLEL (backupctl --parallel; default its [restore]
#        parallel, 4)  PGBR_PROCESS_MAX=2  BB_PARALLEL=2  CHUNK_KIB=1024  BB_LEVEL=1  PGBR_COMPRESS_LEVEL (3)
#        S3_SERVER=moto|s3s|s3s-fs  KEEP=1
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SCALE=${SCALE:-100}
RUNS=${RUNS:-3}
S3=${S3:-1}
CHANGE_PCT=${CHANGE_PCT:-3}
VERIFY_PARALLEL=${VERIFY_PARALLEL:-}
PGBR_PROCESS_MAX=${PGBR_PROCESS_MAX:-2}
BB_PARALLEL=${BB_PARALLEL:-2}
CHUNK_KIB=${CHUNK_KIB:-1024}
BB_LEVEL=${BB_LEVEL:-1}

bench_start verify
[ -x "$BASE_BACKUP" ] && [ -x "$BACKUPCTL" ] || die "base-backup / backupctl were not built"

PORT=$(free_port)
SRC=$WORK/src
RESULTS=$WORK/results.tsv
: > "$RESULTS"
mkdir -p "$WORK/spools" "$WORK/out"
KINDS="file"
if [ "$S3" = 1 ]; then
    KINDS="file s3"
    s3_with_peer_buckets
fi
chown -R postgres:postgres "$WORK"

# ---------------------------------------------------------------------------------------------------------------
# source cluster: pgbench -i, archiving nowhere
pgbench_source "$SRC" "$PORT" "$SCALE"
sql "$PORT" "create table bench_tick(t timestamptz)" >/dev/null
ROWS=$((SCALE * 100000))
CHANGED=$((ROWS * CHANGE_PCT / 100))
DBSIZE=$(sql "$PORT" "select pg_database_size('postgres')")
log "database: $((DBSIZE / 1048576)) MiB"

# repositories and configurations: bb-KIND (backupctl) and pgbr-KIND (posix for file)
declare -A CONF
ARCH=
for kind in $KINDS; do
    if [ "$kind" = file ]; then url="file://$WORK/bb-repo-file"; else url="s3://bbs3/verify"; fi
    CONF[bb-$kind]=$WORK/bb-$kind.toml
    restore_section=()
    [ -n "$VERIFY_PARALLEL" ] && restore_section=("[restore]" "parallel = $VERIFY_PARALLEL")
    WALPUSH_LEVEL=$BB_LEVEL walpush_conf "${CONF[bb-$kind]}" "$url" "$WORK/spools/bb-$kind" push_concurrency=2 \
        "[postgres]" "host = \"$WORK\"" "port = $PORT" 'user = "postgres"' \
        "[backup]" "parallel = $BB_PARALLEL" "chunk_size_kib = $CHUNK_KIB" "archive_timeout_seconds = 600" \
        "${restore_section[@]}"
    pk=$kind
    [ "$kind" = file ] && pk=posix
    dir=$WORK/pgbr-$pk
    mkdir -p "$dir"
    if [ "$kind" = file ]; then repo=$WORK/pgbr-repo-posix; else repo=/verify; fi
    CONF[pgbr-$kind]=$dir/pgbackrest.conf
    pgbr_conf "${CONF[pgbr-$kind]}" "$pk" "$repo" "$SRC" "$PORT" "process-max=$PGBR_PROCESS_MAX" "archive-timeout=600"
    chown -R postgres:postgres "$dir"
    as_pg pgbackrest --config="${CONF[pgbr-$kind]}" --stanza=bench stanza-create >"$dir/stanza.log" 2>&1 \
        || { cat "$dir/stanza.log"; die "pgbackrest stanza-create ($pk) failed"; }
    ARCH="$ARCH${ARCH:+ && }$WAL_PUSH --config ${CONF[bb-$kind]} %p"
    ARCH="$ARCH && pgbackrest --config=${CONF[pgbr-$kind]} --stanza=bench archive-push %p"
done
log "archive_command: $ARCH"
set_archive "$ARCH"
for kind in $KINDS; do
    as_pg pgbackrest --config="${CONF[pgbr-$kind]}" --stanza=bench check >"$WORK/out/check-$kind.log" 2>&1 \
        || { cat "$WORK/out/check-$kind.log"; die "pgbackrest check ($kind) failed"; }
done

# setup_backup TOOL KIND TYPE(full|incr): one backup, untimed (its wall time is logged)
setup_backup() {
    local tool=$1 kind=$2 type=$3 t0 t=$3
    t0=$(date +%s.%N)
    if [ "$tool" = bb ]; then
        [ "$t" = incr ] && t=incremental
        as_pg "$BASE_BACKUP" --config "${CONF[bb-$kind]}" --type "$t" --fast --json \
            >"$WORK/out/setup-$type-bb-$kind.out" 2>"$WORK/out/setup-$type-bb-$kind.err" \
            || { tail -5 "$WORK/out/setup-$type-bb-$kind.err"; die "base-backup --type $t ($kind) failed"; }
    else
        as_pg pgbackrest --config="${CONF[pgbr-$kind]}" --stanza=bench --type="$type" --start-fast backup \
            >"$WORK/out/setup-$type-pgbr-$kind.out" 2>&1 \
            || { tail -5 "$WORK/out/setup-$type-pgbr-$kind.out"; die "pgbackrest backup --type=$type ($kind) failed"; }
    fi
    log "  $type backup, $tool $kind: $(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $t0}") s"
}
# pgBackRest first: its expire (after every backup; repo1-retention-full=1) removes the WAL before its full
# backup, so its archive starts there; backupctl keeps the few segments of the setup before it (see the report)
log "full backups"
for kind in $KINDS; do for tool in pgbr bb; do setup_backup "$tool" "$kind" full; done; done
log "update $CHANGED rows (aid <= $CHANGED), checkpoint; incremental backups"
sql "$PORT" "update pgbench_accounts set abalance = abalance + 1 where aid <= $CHANGED" >/dev/null
sql "$PORT" "checkpoint" >/dev/null
for kind in $KINDS; do for tool in pgbr bb; do setup_backup "$tool" "$kind" incr; done; done
# every segment written so far in every repository, then nothing more: the repositories do not change while
# they are verified
switch_and_wait
log "archiver failures: $(sql "$PORT" "select failed_count from pg_stat_archiver")"
pg_stop "$SRC"

# repo_usage TOOL KIND: "objects bytes" of the whole repository (backups and WAL: what a verify of all reads)
repo_usage() {
    case "$1-$2" in
        bb-file) files_usage "$WORK/bb-repo-file" ;;
        pgbr-file) files_usage "$WORK/pgbr-repo-posix" ;;
        bb-s3) s3_prefix_usage bbs3 verify/ //none ;;
        pgbr-s3) s3_prefix_usage pgbr verify/ //none ;;
    esac
}
declare -A USAGE
for kind in $KINDS; do
    for tool in bb pgbr; do
        USAGE[$tool-$kind]=$(repo_usage "$tool" "$kind")
        log "repository $tool-$kind: ${USAGE[$tool-$kind]% *} objects, $((${USAGE[$tool-$kind]#* } / 1048576)) MiB"
    done
done

# ---------------------------------------------------------------------------------------------------------------
# verify_cmd TOOL KIND: the verify command line (as an array in CMD)
verify_cmd() {
    if [ "$1" = bb ]; then
        CMD=("$BACKUPCTL" --config "${CONF[bb-$2]}" verify --wal --json-output)
        [ -n "$VERIFY_PARALLEL" ] && CMD+=(--parallel "$VERIFY_PARALLEL")
    else
        # --verbose: without it, a clean repository prints nothing (2.45) and the verdict cannot be read
        CMD=(pgbackrest --config="${CONF[pgbr-$2]}" --stanza=bench --output=text --verbose verify)
    fi
    return 0
}
# verdict TOOL OUTFILE: "<ok|NOT ok> <bytes read or -> <what was checked>" from the tool's own report
verdict() {
    python3 - "$1" "$2" <<'EOF'
import json, re, sys
tool, path = sys.argv[1:]
text = open(path).read()
if tool == "bb":
    try:
        d = json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print("unparsed - -"); sys.exit()
    print("ok" if d.get("ok") else "NOT-ok", d.get("bytes_read", "-"),
          f"{d.get('objects_checked')} objects, {d.get('wal_objects_checked')} WAL")
else:
    m = re.search(r"^\s*status:\s*(\S+)", text, re.M)
    files = "+".join(re.findall(r"total files checked:\s*(\d+)", text)) or "0"
    wal = sum(int(x) for x in re.findall(r"total WAL checked:\s*(\d+)", text))
    print("ok" if m and m.group(1) == "ok" else "NOT-ok", "-", f"{files} files, {wal} WAL")
EOF
}
# record CASE RUN SECS CPU RSS READ_BYTES CHECKED OK S3_SERVER_CPU
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$RESULTS"; }
# verify_leg TOOL KIND RUN: one timed verify of the whole repository
verify_leg() {
    local tool=$1 kind=$2 run=$3 case=verify-$1-$2 rc=0 v ok srv=-
    verify_cmd "$tool" "$kind"
    log "run $run: $case"
    timed "$case-$run" "${CMD[@]}" || rc=$?
    [ "$kind" = s3 ] && srv=$T_SRV
    v=$(verdict "$tool" "$WORK/out/$case-$run.out")
    read -r ok read_bytes checked <<<"$v"
    if [ "$rc" != 0 ] || [ "$ok" != ok ]; then
        ok="NO(exit-$rc,$ok)"
        record "$case" "$run" failed "$T_CPU" "$T_RSS" "$read_bytes" "$checked" "$ok" "$srv"
    else
        record "$case" "$run" "$T_SECS" "$T_CPU" "$T_RSS" "$read_bytes" "$checked" yes "$srv"
    fi
    log "  $T_SECS s, CPU $T_CPU s, RSS $T_RSS MiB, exit $rc, verdict $ok, checked $checked, S3 server CPU $srv s"
}
for run in $(seq 1 "$RUNS"); do
    for kind in $KINDS; do
        for t in $(in_order "$run" bb pgbr); do verify_leg "$t" "$kind" "$run"; done
    done
done

# ---------------------------------------------------------------------------------------------------------------
# corruption (file:// only, untimed): flip one byte in the middle of the largest data file, verify, flip it back
flip_byte() {
    python3 - "$1" <<'EOF'
import os, sys
p = sys.argv[1]
with open(p, "r+b") as f:
    n = os.fstat(f.fileno()).st_size
    f.seek(n // 2); b = f.read(1); f.seek(n // 2); f.write(bytes([b[0] ^ 0xFF]))
EOF
}
largest() { find "$@" -type f -printf '%s %p\n' | sort -n | tail -1 | cut -d' ' -f2-; }
CORRUPT=$WORK/corrupt.txt
: > "$CORRUPT"
for tool in bb pgbr; do
    if [ "$tool" = bb ]; then
        obj=$(largest "$WORK/bb-repo-file/data")
        rel=${obj#"$WORK/bb-repo-file/"}
    else
        full=$(find "$WORK/pgbr-repo-posix/backup/bench" -maxdepth 1 -name '*F' -printf '%f\n' | sort | head -1)
        obj=$(largest "$WORK/pgbr-repo-posix/backup/bench/$full/pg_data")
        rel=${obj#"$WORK/pgbr-repo-posix/"}
    fi
    [ -n "$obj" ] || die "no data file found in the $tool repository"
    log "corruption: $tool, one byte flipped in $rel ($(stat -c %s "$obj") bytes)"
    flip_byte "$obj"
    verify_cmd "$tool" file
    rc=0
    timed "corrupt-$tool-file" "${CMD[@]}" || rc=$?
    flip_byte "$obj"
    v=$(verdict "$tool" "$WORK/out/corrupt-$tool-file.out")
    # the report line that names the file (its last path component: the object's hash / the relation file)
    line=$(cat "$WORK/out/corrupt-$tool-file.out" "$WORK/out/corrupt-$tool-file.err" \
        | grep -F "$(basename "$obj")" | head -1 | cut -c1-160 || true)
    if [ "$rc" != 0 ] && [ -n "$line" ]; then det=yes; else det=NO; fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$rel" "$rc" "${v%% *}" "$det" "${line:-(no line names the file)}" \
        >> "$CORRUPT"
    log "  exit $rc, verdict ${v%% *}, detected: $det"
done

# ---------------------------------------------------------------------------------------------------------------
s3_stop
CASES=
for kind in $KINDS; do CASES="$CASES verify-bb-$kind verify-pgbr-$kind"; done
name_of() {
    local c=$1 tool where
    case "$c" in *-bb-*) tool="backupctl verify --wal" ;; *) tool="pgbackrest verify" ;; esac
    case "$c" in
        *-bb-file) where="file://" ;;
        *-pgbr-file) where="posix" ;;
        *) where="S3" ;;
    esac
    printf '%s %s' "$tool" "$where"
}
{
    echo
    echo "### verify: $(date -u +%FT%TZ), $(nproc) cores, pgbench scale $SCALE (database $((DBSIZE / 1048576)) MiB)," \
        "$RUNS run(s), binaries from $ROOT ($BIN_REV)"
    echo "each repository: a full backup, an incremental after updating $CHANGED rows ($CHANGE_PCT %), and all WAL" \
        "archived meanwhile by the tool's own archive_command"
    echo "backupctl verify --wal: parallel ${VERIFY_PARALLEL:-default ([restore] parallel 4)}; base-backup zstd level" \
        "$BB_LEVEL, chunk_size_kib $CHUNK_KIB; pgBackRest $(pgbackrest version | awk '{print $2}') verify: process-max" \
        "$PGBR_PROCESS_MAX, zst level ${PGBR_COMPRESS_LEVEL:-default 3};" \
        "S3: $([ "$S3" = 1 ] && echo "$S3_SERVER on loopback (pgBackRest through stunnel)" || echo skipped)"
    printf '\n%-30s %9s %22s %7s %8s %9s %8s %9s %16s %8s %7s\n' case "median s" "runs s" "CPU s" "RSS MiB" \
        "repo MiB" objects "read MiB" checked "ok" "S3 CPU"
    printf -- '-%.0s' $(seq 1 144); echo
    for c in $CASES; do
        key=${c#verify-}
        col() { awk -F'\t' -v t="$c" -v k="$1" '$1 == t && $3 != "failed" && $k != "-" {print $k}' "$RESULTS"; }
        fmt() { awk -v f="$1" '{if ($1 == "nan") print "-"; else printf f "\n", $1}'; }
        s=$(col 3 | median | fmt %.2f)
        runs=$(awk -F'\t' -v t="$c" '$1 == t {print $3}' "$RESULTS" | paste -sd/)
        cpu=$(col 4 | median | fmt %.1f)
        rss=$(col 5 | median | fmt %.0f)
        rd=$(col 6 | median | awk '{if ($1 == "nan") print "-"; else printf "%.1f\n", $1 / 1048576}')
        checked=$(awk -F'\t' -v t="$c" '$1 == t {print $7}' "$RESULTS" | sort -u | paste -sd/)
        ok=$(awk -F'\t' -v t="$c" '$1 == t {n++; if ($8 == "yes") y++} END {print y + 0 "/" n}' "$RESULTS")
        srv=$(col 9 | median | fmt %.1f)
        u=${USAGE[$key]}
        printf '%-30s %9s %22s %7s %8s %9.1f %8s %9s %16s %8s %7s\n' "$(name_of "$c")" "$s" "$runs" "$cpu" "$rss" \
            "$(awk "BEGIN {print ${u#* } / 1048576}")" "${u% *}" "$rd" "$checked" "$ok" "$srv"
    done
    echo "(median s: wall time of the command; CPU s: user + sys of it and its children (/usr/bin/time -v; pgBackRest's"
    echo " local processes included); RSS MiB: peak RSS of its largest process; repo MiB / objects: the whole"
    echo " repository, backups and WAL; read MiB: bytes read as the tool reports them (backupctl's bytes_read;"
    echo " pgBackRest reports none: it reads about the whole repository); checked: data objects/files + WAL files the"
    echo " tool says it checked; ok: runs with exit status 0 and the tool's own verdict ok (JSON \"ok\": true /"
    echo " \"status: ok\"); S3 CPU: CPU seconds of the S3 server ($S3_SERVER) during the command; runs s: every run,"
    echo " 'failed' when it did not pass)"
    echo
    echo "corruption (file://, untimed): one byte flipped in the middle of the largest data file, then verify again"
    printf '%-10s %-6s %-8s %-9s %s\n' tool exit verdict detected "file / the report's line naming it"
    while IFS=$'\t' read -r tool rel rc v det line; do
        [ "$tool" = bb ] && tool=backupctl || tool=pgbackrest
        printf '%-10s %-6s %-8s %-9s %s\n' "$tool" "$rc" "$v" "$det" "$rel"
        printf '%-36s %s\n' "" "$line"
    done < "$CORRUPT"
    echo "(detected: exit status non-zero and a report line names the file; the byte is flipped back afterwards)"
    echo "total time: $(($(date +%s) - T0)) s"
} | tee "$WORK/report.txt"
{
    for f in "$WORK"/out/verify-*.err; do
        [ -s "$f" ] && echo "--- $(basename "$f" .err) stderr: $(tail -3 "$f" | tr '\n' ' ' | cut -c1-300)"
    done
    true
} | tee -a "$WORK/report.txt"
mkdir -p "$BENCH_DIR/results" && cp "$WORK/report.txt" "$BENCH_DIR/results/verify-$(date +%Y%m%d-%H%M%S).txt"
