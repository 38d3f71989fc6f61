#!/bin/sh
# shellcheck disable=SC2086 # $podman, $flags, $tls, $binaries and $clients are lists of words, split on purpose
# Build the backupctl image with podman where docker.io cannot be reached: the Debian 12 base is made locally
# with mmdebstrap from deb.debian.org, and the Rust toolchain of the build stage comes from rustup
# (static.rust-lang.org). Not part of CI: it takes minutes and needs the network.
#
# Usage (from anywhere, as root; needs the Debian packages podman, mmdebstrap and, on a host with hybrid cgroups,
# runc):
#   packaging/container/build.sh [--prebuilt] [--pgdg] [--tag NAME]
#     --prebuilt  use target/dist/* built outside (cargo build --profile dist --locked --bins) instead of the
#                 build stage
#     --pgdg      add apt.postgresql.org and install the clients of 13 to 18 (default here: Debian's own
#                 postgresql-client-15 only, for a machine that cannot reach apt.postgresql.org)
#     --tag NAME  image name (default localhost/backupctl:dev)
#     --ca-file F trust the CA certificates in F (PEM) for HTTPS inside the build (rustup, crates.io): for a
#                 machine behind a TLS-intercepting proxy, e.g. --ca-file /etc/ssl/certs/ca-certificates.crt
# Then, for example:
#   podman run --rm localhost/backupctl:dev --help
# (with the runtime and --ulimit flags this script prints last, on a host that needs them).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
prebuilt=0
pgdg=0
tag=localhost/backupctl:dev
ca=""
while [ $# -gt 0 ]; do
    case "$1" in
        --prebuilt) prebuilt=1 ;;
        --pgdg) pgdg=1 ;;
        --tag) tag=$2; shift ;;
        --ca-file) ca=$2; shift ;;
        *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

# crun refuses hosts whose cgroups are mounted in hybrid mode (v1 controllers plus a v2 "unified" tree); runc
# runs there. Without CAP_SYS_RESOURCE, podman's default rlimits (nofile 1048576, nproc 4194304) cannot be set:
# ask for less.
podman="podman"
if [ -d /sys/fs/cgroup/unified ] && [ "$(stat -fc %T /sys/fs/cgroup)" = tmpfs ]; then
    podman="podman --runtime runc"
fi
flags=""
cap_eff=$(awk '/^CapEff:/ {print $2}' /proc/self/status)
if [ $(( 0x$cap_eff >> 24 & 1 )) -eq 0 ]; then
    flags="--ulimit nofile=1024:1024 --ulimit nproc=4096:4096"
fi
# The CA file is mounted read-only at /run/build-ca.pem for the RUN steps, which are told about it through build
# arguments (curl, rustup and cargo read SSL_CERT_FILE / CURL_CA_BUNDLE / CARGO_HTTP_CAINFO); nothing of it stays
# in the images.
tls=""
if [ -n "$ca" ]; then
    tls="--volume $(realpath "$ca"):/run/build-ca.pem:ro --build-arg SSL_CERT_FILE=/run/build-ca.pem"
    tls="$tls --build-arg CURL_CA_BUNDLE=/run/build-ca.pem --build-arg CARGO_HTTP_CAINFO=/run/build-ca.pem"
fi
work=${TMPDIR:-/tmp}/backupctl-image
mkdir -p "$work"

# 1. Debian 12 (minbase: apt, no recommends) as localhost/debian:bookworm-mmdebstrap.
if ! podman image exists localhost/debian:bookworm-mmdebstrap; then
    mmdebstrap --variant=minbase --include=ca-certificates bookworm "$work/bookworm.tar" http://deb.debian.org/debian
    podman import --change 'CMD ["/bin/bash"]' "$work/bookworm.tar" localhost/debian:bookworm-mmdebstrap
fi

# 2. Where the binaries come from.
if [ "$prebuilt" = 1 ]; then
    # Into the build context (packaging/container/prebuilt/, ignored by git), for the build stage to copy.
    rm -rf "${here:?}/prebuilt" && mkdir -p "$here/prebuilt"
    for b in wal-push wal-fetch base-backup pitr-restore backupctl; do
        test -x "$root/target/dist/$b" || { echo "build.sh: $root/target/dist/$b missing: cargo build --profile dist --locked --bins" >&2; exit 1; }
        cp "$root/target/dist/$b" "$here/prebuilt/"
    done
    binaries="--build-arg PREBUILT=1 --build-arg RUST_IMAGE=localhost/debian:bookworm-mmdebstrap"
else
    # The build stage's base: gcc and libc headers (aws-lc-sys) and Rust 1.95.0 from rustup.
    if ! podman image exists localhost/rust:1.95-bookworm; then
        cat > "$work/Containerfile.rust" <<'EOF'
FROM localhost/debian:bookworm-mmdebstrap
ARG SSL_CERT_FILE
ARG CURL_CA_BUNDLE
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN curl --proto '=https' --tlsv1.2 -sSf -o /tmp/rustup-init \
        https://static.rust-lang.org/rustup/dist/x86_64-unknown-linux-gnu/rustup-init \
 && chmod +x /tmp/rustup-init \
 && /tmp/rustup-init -y --no-modify-path --profile minimal --default-toolchain 1.95.0 \
 && rm /tmp/rustup-init && rustc --version
EOF
        $podman build $flags $tls -t localhost/rust:1.95-bookworm -f "$work/Containerfile.rust" "$work"
    fi
    binaries="--build-arg RUST_IMAGE=localhost/rust:1.95-bookworm"
fi

# 3. The runtime image.
if [ "$pgdg" = 1 ]; then
    clients="--build-arg PGDG=1"
else
    clients="--build-arg PGDG=0 --build-arg PG_MAJORS=15"
fi
$podman build --format docker $flags $tls $binaries $clients --build-arg DEBIAN_IMAGE=localhost/debian:bookworm-mmdebstrap \
    --target runtime -t "$tag" -f "$here/Dockerfile" "$root"

echo "built $tag; run it with: $podman run --rm${flags:+ $flags} $tag --help"
