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
command -v moto_server >/dev/null 2>&1 || { echo "setup: moto_server is not on PATH" >&2; exit 1; }
python3 -c 'import moto.server' || { echo "setup: moto did not install" >&2; exit 1; }
echo "setup: ok ($(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1), moto $(python3 -c 'import moto; print(moto.__version__)'))"
