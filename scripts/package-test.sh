#!/usr/bin/env bash
# Build the Debian package and test it as installed (run by scripts/test.sh; as root, on Debian 12):
#   lintian reports no errors; dpkg -i installs it; the binaries, man pages, completions, units, documentation and
#   configuration are where they belong, with the right owners and modes; systemd-analyze verifies the installed
#   units; the demo's archive -> backup -> restore path runs with the installed programs as the postgres user;
#   dpkg --purge leaves the repository and its backups in place.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "package-test: FAILED: $*" >&2; exit 1; }
# Each step says how long the one before it took (a cold CI run spends most of its time in the dist build).
last=$SECONDS
step() { echo "== package-test: $* (previous step $((SECONDS - last)) s)"; last=$SECONDS; }

step "build (packaging/deb/build.sh)"
deb=$(bash packaging/deb/build.sh | tail -1)
[ -f "$deb" ] || fail "no package was built ($deb)"

step "lintian $deb"
# Errors fail the run; warnings are printed for a human to read.
lintian --fail-on error --tag-display-limit 0 "$deb" || fail "lintian reported errors"

step "dpkg -i"
had_repo=0
[ -d /var/lib/backupctl/repo ] && had_repo=1
dpkg -i "$deb" >/dev/null || fail "dpkg -i $deb"
for b in wal-push wal-fetch base-backup pitr-restore backupctl; do
    [ -x "/usr/bin/$b" ] || fail "/usr/bin/$b is missing"
    "/usr/bin/$b" --version >/dev/null || fail "/usr/bin/$b --version"
    file -b "/usr/bin/$b" | grep -q ', stripped' || fail "/usr/bin/$b is not stripped"
    [ -s "/usr/share/man/man1/$b.1.gz" ] || fail "no man page for $b"
    [ -s "/usr/share/bash-completion/completions/$b" ] || fail "no bash completion for $b"
    [ -s "/usr/share/zsh/vendor-completions/_$b" ] || fail "no zsh completion for $b"
    [ -s "/usr/share/fish/vendor_completions.d/$b.fish" ] || fail "no fish completion for $b"
done
# A page for every subcommand of backupctl that its --help lists.
subs=$(/usr/bin/backupctl --help | awk '/^Commands:/ {on = 1; next} on && /^  [a-z]/ {print $1} on && /^$/ {exit}')
[ -n "$subs" ] || fail "could not read backupctl's subcommands from --help"
for s in $subs; do
    [ "$s" = help ] && continue
    [ -s "/usr/share/man/man1/backupctl-$s.1.gz" ] || fail "no man page for backupctl $s"
done
zcat /usr/share/man/man1/backupctl-prune.1.gz | grep -qE 'dry(\\)?-run' || fail "backupctl-prune(1) lacks --dry-run"
bash -c 'source /usr/share/bash-completion/completions/backupctl && complete -p backupctl' >/dev/null \
    || fail "the bash completion does not load"
for f in README.md operations.md configuration.md design/format2.md examples/cron.d-backupctl \
    examples/postgresql.conf.sample changelog.Debian.gz copyright; do
    [ -s "/usr/share/doc/backupctl/$f" ] || fail "/usr/share/doc/backupctl/$f is missing"
done
# Hints name the packaged documentation.
said=$(/usr/bin/backupctl --config /nonexistent/backupctl.toml status 2>&1 || true)
grep -q 'hint: .*/usr/share/doc/backupctl/configuration.md' <<<"$said" \
    || fail "a configuration error's hint does not name /usr/share/doc/backupctl/configuration.md: $said"
conf=/etc/backupctl/backupctl.toml
[ "$(stat -c '%a %U %G' "$conf")" = "640 root postgres" ] || fail "$conf is $(stat -c '%a %U %G' "$conf")"
grep -qx /etc/backupctl/backupctl.toml /var/lib/dpkg/info/backupctl.conffiles || fail "$conf is not a conffile"
for d in /var/lib/backupctl/repo /var/lib/backupctl/spool; do
    if [ "$had_repo" = 0 ]; then
        [ "$(stat -c '%a %U %G' "$d")" = "700 postgres postgres" ] || fail "$d is $(stat -c '%a %U %G' "$d")"
    fi
done
runuser -u postgres -- /usr/bin/backupctl config-show >/dev/null || fail "the packaged configuration does not load"
units=$(ls /lib/systemd/system/backupctl-*)
[ "$(echo "$units" | wc -l)" -ge 6 ] || fail "units missing: $units"
if command -v systemd-analyze >/dev/null 2>&1; then
    step "systemd-analyze verify"
    inst=$(mktemp -d)
    for i in full incremental; do ln -s /lib/systemd/system/backupctl-backup@.service "$inst/backupctl-backup@$i.service"; done
    # shellcheck disable=SC2086
    out=$(systemd-analyze verify $(echo "$units" | grep -v '@') "$inst"/* 2>&1) || fail "systemd-analyze: $out"
    if echo "$out" | grep backupctl; then fail "systemd-analyze complained"; fi
    rm -rf "$inst"
fi

step "the demo with the installed programs (DEMO_BIN=/usr/bin bash scripts/demo.sh)"
DEMO_BIN=/usr/bin bash scripts/demo.sh | tail -3

step "dpkg --purge keeps the repository"
marker=/var/lib/backupctl/repo/.package-test-marker
runuser -u postgres -- touch "$marker"
dpkg --purge backupctl >/dev/null 2>&1 || fail "dpkg --purge"
[ -e "$marker" ] || fail "purging the package removed the repository"
[ ! -e /usr/bin/backupctl ] || fail "/usr/bin/backupctl is still there after purge"
[ ! -e "$conf" ] || fail "$conf is still there after purge"
rm -f "$marker"
step "ok"
