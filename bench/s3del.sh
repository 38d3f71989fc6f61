#!/usr/bin/env bash
# s3del.sh PORT BUCKET SUBSTRING: delete every object of BUCKET (S3 on 127.0.0.1:PORT) whose key contains
# SUBSTRING. Signs with SigV4 through curl (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY); used as a hyperfine
# --prepare step, which runs as postgres (no boto3 there).
set -euo pipefail
port=$1 bucket=$2 name=$3
auth=(--aws-sigv4 "aws:amz:us-east-1:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY")
list=$(curl -sSf "${auth[@]}" "http://127.0.0.1:$port/$bucket?list-type=2&max-keys=1000")
keys=$(grep -o '<Key>[^<]*</Key>' <<<"$list" | sed 's/<[^>]*>//g' | grep -F "$name" || true)
for k in $keys; do
    curl -sSf "${auth[@]}" -X DELETE "http://127.0.0.1:$port/$bucket/$k" >/dev/null
done
