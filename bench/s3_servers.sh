#!/usr/bin/env bash
# S3-protocol servers on loopback, side by side: which one can a restore benchmark use without measuring the server?
# For each server in SERVERS, with a fresh store, one PACK_MIB object of random bytes, then RUNS times:
#   small-par   SMALL_N ranged GETs of SMALL_SIZE bytes at random aligned offsets, SMALL_PAR at a time
#               (curl --parallel: libcurl multi, keep-alive connections): requests/s, server CPU seconds
#   small-seq   SEQ_N such GETs one after another on one connection: ms per request (Nagle + delayed ACK show here)
#   big         BIG_N whole-object GETs, BIG_PAR at a time: MiB/s
# and once, correctness of create-only puts (boto3): a second `If-None-Match: *` put of a key must get 412, and in
# RACE_ROUNDS rounds of 32 such puts of one key from 16 threads exactly one may succeed, the object then holding the
# winner's bytes. Every GET's status and size is checked (206 and the range's length, 200 and the object's).
# Servers: moto (python3 -m moto.server), s3s (bench/s3server), s3s-plain (bench/s3server --plain: the s3s-fs
# 0.14.1 binary's behaviour, same library code, no TCP_NODELAY, no create lock), s3s-fs (the s3s-fs binary, only
# if installed).
#
# Usage: bash bench/s3_servers.sh      (as root or any user; needs curl >= 7.75 for --aws-sigv4, python3 + moto)
# Env:   SERVERS="moto s3s-plain s3s"  RUNS=3  PACK_MIB=64  SMALL_N=1000  SMALL_SIZE=8192  SMALL_PAR=4  SEQ_N=200
#        BIG_N=8  BIG_PAR=2  RACE_ROUNDS=5  KEEP=1
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SERVERS=${SERVERS:-moto s3s-plain s3s}
RUNS=${RUNS:-3}
PACK_MIB=${PACK_MIB:-64}
SMALL_N=${SMALL_N:-1000}
SMALL_SIZE=${SMALL_SIZE:-8192}
SMALL_PAR=${SMALL_PAR:-4}
SEQ_N=${SEQ_N:-200}
BIG_N=${BIG_N:-8}
BIG_PAR=${BIG_PAR:-2}
RACE_ROUNDS=${RACE_ROUNDS:-5}

new_workdir s3servers
mkdir -p "$WORK/out"
build_s3server
command -v python3 >/dev/null && python3 -c 'import moto, boto3' 2>/dev/null || pip install -q 'moto[server]>=5.2.5'
head -c $((PACK_MIB * 1024 * 1024)) /dev/urandom > "$WORK/pack"
PACK_BYTES=$((PACK_MIB * 1024 * 1024))

# curl_conf FILE N SIZE: a curl config of N ranged GETs of SIZE bytes at random SIZE-aligned offsets of the pack
# (the same offsets for every server: awk's seeded generator), each writing "status bytes" on its own line
curl_conf() {
    local file=$1 n=$2 size=$3
    awk -v n="$n" -v size="$size" -v total="$PACK_BYTES" -v url="http://127.0.0.1:$S3_PORT/bench/pack" \
        -v auth="$S3_KEY:$S3_SECRET" 'BEGIN {
        srand(10); slots = int(total / size)
        for (i = 0; i < n; i++) {
            off = int(rand() * slots) * size
            printf "url = \"%s\"\nrange = \"%d-%d\"\noutput = \"/dev/null\"\n", url, off, off + size - 1
            printf "aws-sigv4 = \"aws:amz:us-east-1:s3\"\nuser = \"%s\"\n", auth
            printf "header = \"x-amz-content-sha256: UNSIGNED-PAYLOAD\"\nwrite-out = \"%%{http_code} %%{size_download}\\n\"\n"
            if (i < n - 1) print "next"
        }
    }' > "$file"
}
# big_conf FILE N: N whole-object GETs
big_conf() {
    local file=$1 n=$2 i
    : > "$file"
    for i in $(seq 1 "$n"); do
        {
            echo "url = \"http://127.0.0.1:$S3_PORT/bench/pack\""
            echo 'output = "/dev/null"'
            echo 'aws-sigv4 = "aws:amz:us-east-1:s3"'
            echo "user = \"$S3_KEY:$S3_SECRET\""
            echo 'header = "x-amz-content-sha256: UNSIGNED-PAYLOAD"'
            echo 'write-out = "%{http_code} %{size_download}\n"'
            if [ "$i" -lt "$n" ]; then echo next; fi
        } >> "$file"
    done
}
# fetch TAG WANT PARALLEL CONF: run curl on CONF, check every line is WANT ("206 8192"), set F_SECS and F_SRV
fetch() {
    local tag=$1 want=$2 par=$3 conf=$4 t0 t1 s0 bad
    local opts=(-s -S)
    if [ "$par" -gt 1 ]; then opts+=(--parallel --parallel-max "$par"); fi
    s0=$(srv_cpu)
    t0=$(date +%s.%N)
    curl "${opts[@]}" -K "$conf" > "$WORK/out/$tag.codes" 2> "$WORK/out/$tag.err" || die "$tag: curl failed: $(tail -3 "$WORK/out/$tag.err")"
    t1=$(date +%s.%N)
    bad=$(grep -vcx "$want" "$WORK/out/$tag.codes" || true)
    [ "$bad" = 0 ] || die "$tag: $bad answers were not '$want': $(grep -vx "$want" "$WORK/out/$tag.codes" | sort | uniq -c | head -3)"
    F_SECS=$(awk "BEGIN {printf \"%.3f\", $t1 - $t0}")
    F_SRV=$(awk "BEGIN {printf \"%.2f\", $(srv_cpu) - $s0}")
}

# check_create: "412-on-existing max-winners" for create-only puts on the running server
check_create() {
    python3 - "$S3_PORT" "$RACE_ROUNDS" <<'EOF'
import sys, boto3, botocore, concurrent.futures as cf
port, rounds = sys.argv[1], int(sys.argv[2])
c = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                 config=botocore.config.Config(max_pool_connections=32, retries={"max_attempts": 1}))
c.put_object(Bucket="bench", Key="create/once", Body=b"first", IfNoneMatch="*")
try:
    c.put_object(Bucket="bench", Key="create/once", Body=b"second", IfNoneMatch="*")
    second = "200 (replaced!)" if c.get_object(Bucket="bench", Key="create/once")["Body"].read() == b"second" else "200"
except botocore.exceptions.ClientError as e:
    second = str(e.response["ResponseMetadata"]["HTTPStatusCode"])
except Exception as e:
    second = type(e).__name__
def put(key, i):
    try:
        c.put_object(Bucket="bench", Key=key, Body=b"writer %02d " % i * 20000, IfNoneMatch="*")
        return i
    except Exception:
        return None
worst, lost = 0, 0
for r in range(rounds):
    key = f"race/{r}"
    with cf.ThreadPoolExecutor(16) as ex:
        wins = [w for w in ex.map(lambda i: put(key, i), range(32)) if w is not None]
    worst = max(worst, len(wins))
    try:
        body = c.get_object(Bucket="bench", Key=key)["Body"].read()
        ok = len(wins) == 1 and body == b"writer %02d " % wins[0] * 20000
    except Exception:
        ok = False
    lost += 0 if ok else 1
print(second, worst, lost)
EOF
}

start_server() {
    case "$1" in
        moto) S3_SERVER=moto S3SERVER_FLAGS= ;;
        s3s) S3_SERVER=s3s S3SERVER_FLAGS= ;;
        s3s-plain) S3_SERVER=s3s S3SERVER_FLAGS=--plain ;;
        s3s-fs) S3_SERVER=s3s-fs S3SERVER_FLAGS= ;;
        *) die "unknown server $1" ;;
    esac
    S3_PORT=$(free_port)
    s3_start
    s3_bucket bench
    curl -s -S -o /dev/null -w '%{http_code}' --aws-sigv4 "aws:amz:us-east-1:s3" --user "$S3_KEY:$S3_SECRET" \
        -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -T "$WORK/pack" "http://127.0.0.1:$S3_PORT/bench/pack" \
        | grep -qx 200 || die "$1: upload of the pack failed"
}

RES=$WORK/results.txt
: > "$RES"
for server in $SERVERS; do
    if [ "$server" = s3s-fs ] && ! command -v s3s-fs >/dev/null; then
        log "s3s-fs is not installed (cargo install s3s-fs@0.14.1 --features binary --locked): skipped"
        continue
    fi
    log "server $server"
    start_server "$server"
    curl_conf "$WORK/small.conf" "$SMALL_N" "$SMALL_SIZE"
    curl_conf "$WORK/seq.conf" "$SEQ_N" "$SMALL_SIZE"
    big_conf "$WORK/big.conf" "$BIG_N"
    for run in $(seq 1 "$RUNS"); do
        fetch "$server-small-$run" "206 $SMALL_SIZE" "$SMALL_PAR" "$WORK/small.conf"
        echo "$server small $run $F_SECS $F_SRV" >> "$RES"
        fetch "$server-seq-$run" "206 $SMALL_SIZE" 1 "$WORK/seq.conf"
        echo "$server seq $run $F_SECS $F_SRV" >> "$RES"
        fetch "$server-big-$run" "200 $PACK_BYTES" "$BIG_PAR" "$WORK/big.conf"
        echo "$server big $run $F_SECS $F_SRV" >> "$RES"
        log "  run $run: small ${SMALL_N}x$SMALL_SIZE/$SMALL_PAR $(tail -3 "$RES" | head -1 | cut -d' ' -f4) s," \
            "seq $(tail -2 "$RES" | head -1 | cut -d' ' -f4) s, big $(tail -1 "$RES" | cut -d' ' -f4) s"
    done
    read -r second worst lost < <(check_create || echo "error - -")
    echo "$server create $second $worst $lost" >> "$RES"
    s3_stop || true
done

col() { awk -v s="$1" -v k="$2" -v f="$3" '$1 == s && $2 == k {print $f}' "$RES" | median; }
OUTDIR=$BENCH_DIR/results
mkdir -p "$OUTDIR"
TABLE=$OUTDIR/s3_servers-$(date +%Y%m%d-%H%M%S).md
{
    echo "S3 servers on loopback, $(date -u +%F), load $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores; client curl $(curl --version | head -1 | cut -d' ' -f2)"
    echo "pack ${PACK_MIB} MiB; small: ${SMALL_N} x ${SMALL_SIZE} B ranged GETs, ${SMALL_PAR} at a time; seq: ${SEQ_N} one at a time;" \
        "big: ${BIG_N} x ${PACK_MIB} MiB GETs, ${BIG_PAR} at a time; medians of ${RUNS} runs"
    echo
    echo "| server | small req/s | small server CPU s | seq ms/req | big MiB/s | big server CPU s | 2nd create-only put | most winners of 32 racing creates | rounds with a wrong object |"
    echo "|---|---|---|---|---|---|---|---|---|"
    for server in $SERVERS; do
        grep -q "^$server small" "$RES" || continue
        small=$(col "$server" small 4)
        seq_s=$(col "$server" seq 4)
        big=$(col "$server" big 4)
        read -r _ _ second worst lost < <(grep "^$server create" "$RES")
        printf '| %s | %.0f | %s | %.2f | %.0f | %s | %s | %s | %s |\n' "$server" \
            "$(awk "BEGIN {print $SMALL_N / $small}")" "$(col "$server" small 5)" \
            "$(awk "BEGIN {print 1000 * $seq_s / $SEQ_N}")" \
            "$(awk "BEGIN {print $BIG_N * $PACK_MIB / $big}")" "$(col "$server" big 5)" "$second" "$worst" "$lost"
    done
} | tee "$TABLE"
log "table saved to $TABLE"
