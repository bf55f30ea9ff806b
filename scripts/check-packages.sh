#!/usr/bin/env bash
# Checks the packages in dist/ (built by scripts/package.sh): file lists, modes, config-file
# markings, dependencies, maintainer scripts, lintian, rpm metadata, an install into a
# throwaway root, and systemd-analyze on the unit. Exits non-zero on the first failed check
# group, after printing every check of that group.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

passed=0
failed=0
check() { # description command...
    local what=$1
    shift
    if "$@" >/dev/null 2>&1; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        printf 'FAILED: %s\n' "$what" >&2
    fi
}
has_line() { # file regex
    grep -Eq -- "$2" "$1"
}
fails() { # command...: succeeds when the command fails
    ! "$@"
}

shopt -s nullglob
agent_deb=(dist/csg-agent_*.deb)
console_deb=(dist/csg-console_*.deb)
agent_rpm=(dist/csg-agent-*.rpm)
console_rpm=(dist/csg-console-*.rpm)
for f in agent_deb console_deb agent_rpm console_rpm; do
    declare -n arr=$f
    [ ${#arr[@]} -eq 1 ] || { echo "expected one $f in dist/ (run scripts/package.sh)" >&2; exit 1; }
done
version=$(cargo metadata --no-deps --format-version 1 |
    python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="csg-agent"))')

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- deb: csg-agent
dpkg-deb -c "${agent_deb[0]}" >"$tmp/agent.list"
dpkg-deb -I "${agent_deb[0]}" >"$tmp/agent.info"
dpkg-deb -e "${agent_deb[0]}" "$tmp/agent.control"
check "deb version is $version" has_line "$tmp/agent.info" "^ Version: $version"
check "deb: /usr/bin/csg-agent 0755" has_line "$tmp/agent.list" '^-rwxr-xr-x .* \./usr/bin/csg-agent$'
check "deb: config 0640" has_line "$tmp/agent.list" '^-rw-r----- .* \./etc/csg-agent/agent\.toml$'
check "deb: unit" has_line "$tmp/agent.list" '\./usr/lib/systemd/system/csg-agent\.service$'
check "deb: man page" has_line "$tmp/agent.list" '\./usr/share/man/man1/csg-agent\.1\.gz$'
check "deb: bash completion" has_line "$tmp/agent.list" '\./usr/share/bash-completion/completions/csg-agent$'
check "deb: zsh completion" has_line "$tmp/agent.list" '\./usr/share/zsh/vendor-completions/_csg-agent$'
check "deb: README" has_line "$tmp/agent.list" '\./usr/share/doc/csg-agent/README\.md'
check "deb: copyright" has_line "$tmp/agent.list" '\./usr/share/doc/csg-agent/copyright$'
check "deb: conffile marked" has_line "$tmp/agent.control/conffiles" '^/etc/csg-agent/agent\.toml$'
check "deb: depends on libc" has_line "$tmp/agent.info" '^ Depends: .*libc6'
for s in postinst prerm postrm; do
    check "deb: $s present and executable" test -x "$tmp/agent.control/$s"
    check "deb: $s passes sh -n" sh -n "$tmp/agent.control/$s"
done
check "deb: postinst starts only with a valid config" has_line "$tmp/agent.control/postinst" 'check-config'
check "deb: postrm purges config and state" has_line "$tmp/agent.control/postrm" 'rm -rf /etc/csg-agent /var/lib/csg-agent'
check "deb: postinst makes /etc/exports.d (Debian ships none; the unit skips a missing path)" \
    has_line "$tmp/agent.control/postinst" 'install -d -m 0755 /etc/exports.d'
check "deb: postinst enables the unit without a running systemd (chroot image builds)" \
    has_line "$tmp/agent.control/postinst" 'deb-systemd-helper enable csg-agent.service'

# --- deb: csg-console
dpkg-deb -c "${console_deb[0]}" >"$tmp/console.list"
check "deb: /usr/bin/csgctl 0755" has_line "$tmp/console.list" '^-rwxr-xr-x .* \./usr/bin/csgctl$'
check "deb: csgctl man page" has_line "$tmp/console.list" '\./usr/share/man/man1/csgctl\.1\.gz$'
check "deb: csgctl subcommand man page" has_line "$tmp/console.list" '\./usr/share/man/man1/csgctl-call\.1\.gz$'
check "deb: csgctl bash completion" has_line "$tmp/console.list" '\./usr/share/bash-completion/completions/csgctl$'
check "deb: csgctl zsh completion" has_line "$tmp/console.list" '\./usr/share/zsh/vendor-completions/_csgctl$'
check "deb: csgctl fish completion" has_line "$tmp/console.list" '\./usr/share/fish/vendor_completions\.d/csgctl\.fish$'
check "deb: csg-consoled man page" has_line "$tmp/console.list" '\./usr/share/man/man1/csg-consoled\.1\.gz$'
check "deb: csg-consoled subcommand man page" has_line "$tmp/console.list" '\./usr/share/man/man1/csg-consoled-token-create\.1\.gz$'
check "deb: csg-consoled bash completion" has_line "$tmp/console.list" '\./usr/share/bash-completion/completions/csg-consoled$'
check "deb: csg-consoled zsh completion" has_line "$tmp/console.list" '\./usr/share/zsh/vendor-completions/_csg-consoled$'
check "deb: csg-consoled fish completion" has_line "$tmp/console.list" '\./usr/share/fish/vendor_completions\.d/csg-consoled\.fish$'
dpkg-deb -I "${console_deb[0]}" >"$tmp/console.info"
dpkg-deb -e "${console_deb[0]}" "$tmp/console.control"
check "deb: /usr/bin/csg-consoled 0755" has_line "$tmp/console.list" '^-rwxr-xr-x .* \./usr/bin/csg-consoled$'
check "deb: console.toml 0640" has_line "$tmp/console.list" '^-rw-r----- .* \./etc/csg-console/console\.toml$'
check "deb: csg-consoled unit" has_line "$tmp/console.list" '\./usr/lib/systemd/system/csg-consoled\.service$'
check "deb: console.md" has_line "$tmp/console.list" '\./usr/share/doc/csg-console/console\.md$'
check "deb: console.toml conffile marked" has_line "$tmp/console.control/conffiles" '^/etc/csg-console/console\.toml$'
check "deb: csg-console depends on passwd (useradd)" has_line "$tmp/console.info" '^ Depends: .*passwd'
for s in postinst prerm postrm; do
    check "deb: csg-console $s present and executable" test -x "$tmp/console.control/$s"
    check "deb: csg-console $s passes sh -n" sh -n "$tmp/console.control/$s"
done
check "deb: csg-console postinst makes the system user" has_line "$tmp/console.control/postinst" 'useradd --system'
check "deb: csg-console postinst gives the config to group csg-console" \
    has_line "$tmp/console.control/postinst" 'chown root:csg-console "\$CONFIG"'
check "deb: csg-console postinst enables the unit offline" \
    has_line "$tmp/console.control/postinst" 'deb-systemd-helper enable csg-consoled.service'
check "deb: csg-console postrm purges config and store" \
    has_line "$tmp/console.control/postrm" 'rm -rf /etc/csg-console /var/lib/csg-console'

# --- lintian: no errors (warnings are reported, not fatal)
check "lintian csg-agent: no errors" lintian --fail-on error "${agent_deb[0]}"
check "lintian csg-console: no errors" lintian --fail-on error "${console_deb[0]}"

# --- rpm
rpm -qpi "${agent_rpm[0]}" >"$tmp/rpm.info" 2>/dev/null
rpm -qpl "${agent_rpm[0]}" >"$tmp/rpm.list" 2>/dev/null
rpm -qp --configfiles "${agent_rpm[0]}" >"$tmp/rpm.conf" 2>/dev/null
rpm -qp --scripts "${agent_rpm[0]}" >"$tmp/rpm.scripts" 2>/dev/null
check "rpm version is $version" has_line "$tmp/rpm.info" "^Version *: $version"
check "rpm: binary listed" has_line "$tmp/rpm.list" '^/usr/bin/csg-agent$'
check "rpm: unit listed" has_line "$tmp/rpm.list" '^/usr/lib/systemd/system/csg-agent\.service$'
check "rpm: man page listed" has_line "$tmp/rpm.list" '^/usr/share/man/man1/csg-agent\.1\.gz$'
check "rpm: bash completion listed" has_line "$tmp/rpm.list" '^/usr/share/bash-completion/completions/csg-agent$'
check "rpm: config is a config file" has_line "$tmp/rpm.conf" '^/etc/csg-agent/agent\.toml$'
check "rpm: post-install script" has_line "$tmp/rpm.scripts" 'check-config'
check "rpm: pre-uninstall script" has_line "$tmp/rpm.scripts" 'preuninstall'

# Install both rpms into a throwaway root (scripts off: the root has no shell or systemd).
mkdir -p "$tmp/root"
rpm --root "$tmp/root" --initdb
check "rpm: installs into a throwaway root" rpm --root "$tmp/root" -i --nodeps --noscripts "${agent_rpm[0]}" "${console_rpm[0]}"
check "rpm root: binary is executable" test -x "$tmp/root/usr/bin/csg-agent"
check "rpm root: config mode 0640" test "$(stat -c %a "$tmp/root/etc/csg-agent/agent.toml")" = 640
check "rpm root: rpm -q knows it" rpm --root "$tmp/root" -q csg-agent csg-console
rpm -qpl "${console_rpm[0]}" >"$tmp/crpm.list" 2>/dev/null
rpm -qp --configfiles "${console_rpm[0]}" >"$tmp/crpm.conf" 2>/dev/null
rpm -qp --scripts "${console_rpm[0]}" >"$tmp/crpm.scripts" 2>/dev/null
check "rpm: csg-consoled listed" has_line "$tmp/crpm.list" '^/usr/bin/csg-consoled$'
check "rpm: csg-consoled unit listed" has_line "$tmp/crpm.list" '^/usr/lib/systemd/system/csg-consoled\.service$'
check "rpm: csg-consoled man page listed" has_line "$tmp/crpm.list" '^/usr/share/man/man1/csg-consoled\.1\.gz$'
check "rpm: csg-consoled bash completion listed" has_line "$tmp/crpm.list" '^/usr/share/bash-completion/completions/csg-consoled$'
check "rpm: console.toml is a config file" has_line "$tmp/crpm.conf" '^/etc/csg-console/console\.toml$'
check "rpm: csg-console post-install makes the system user" has_line "$tmp/crpm.scripts" 'useradd --system'
check "rpm: csg-console pre-uninstall stops the service" has_line "$tmp/crpm.scripts" 'systemctl stop csg-consoled'
check "rpm root: console.toml mode 0640" test "$(stat -c %a "$tmp/root/etc/csg-console/console.toml")" = 640
check "rpm root: csg-consoled is executable" test -x "$tmp/root/usr/bin/csg-consoled"

# --- the unit
# Verified as installed, with ExecStart pointing at the installed binary of the throwaway root
# (the root itself has no systemd to resolve targets against).
sed "s#/usr/bin/csg-agent#$tmp/root/usr/bin/csg-agent#g" systemd/csg-agent.service >"$tmp/csg-agent.service"
dpkg-deb -x "${agent_deb[0]}" "$tmp/agent.files"
# The docs are built by the xtask at packaging time; the shipped binary carries no generator.
check "deb: csg-agent has no doc generator" \
    fails "$tmp/agent.files/usr/bin/csg-agent" generate-docs "$tmp/generated"
check "deb: csg-agent --version runs" "$tmp/agent.files/usr/bin/csg-agent" --version
check "deb: the packaged unit is systemd/csg-agent.service" \
    cmp -s "$tmp/agent.files/usr/lib/systemd/system/csg-agent.service" systemd/csg-agent.service
check "unit: ordered after the storage services (start-up reconcile)" \
    has_line systemd/csg-agent.service '^After=.*rtslib-fb-targetctl\.service.*target\.service.*nfs-server\.service'
check "unit: LIO's saved configuration writable (Debian and RHEL)" \
    has_line systemd/csg-agent.service '^ReadWritePaths=.*-/etc/target -/etc/rtslib-fb-target'
check "systemd-analyze verify" systemd-analyze verify --man=no "$tmp/csg-agent.service"
exposure=$(systemd-analyze security --offline=true systemd/csg-agent.service 2>/dev/null | sed -n 's/.*Overall exposure level for csg-agent.service: \([0-9.]*\).*/\1/p')
check "systemd-analyze security exposure $exposure <= 3.0" python3 -c "import sys; sys.exit(0 if float('${exposure:-99}') <= 3.0 else 1)"

# --- the console service's unit and packaged config
dpkg-deb -x "${console_deb[0]}" "$tmp/console.files"
consoled=$tmp/console.files/usr/bin/csg-consoled
check "deb: csg-consoled --version runs" "$consoled" --version
check "deb: the packaged console.toml passes check-config" \
    "$consoled" check-config --config "$tmp/console.files/etc/csg-console/console.toml"
check "deb: the packaged unit is systemd/csg-consoled.service" \
    cmp -s "$tmp/console.files/usr/lib/systemd/system/csg-consoled.service" systemd/csg-consoled.service
check "deb: csg-consoled links no OpenSSL" fails has_line <(ldd "$consoled" 2>&1) 'libssl|libcrypto'
sed "s#/usr/bin/csg-consoled#$consoled#g" systemd/csg-consoled.service >"$tmp/csg-consoled.service"
check "csg-consoled unit: systemd-analyze verify" systemd-analyze verify --man=no "$tmp/csg-consoled.service"
for key in 'User=csg-console' 'StateDirectory=csg-console' 'ProtectSystem=strict' 'NoNewPrivileges=yes' \
    'CapabilityBoundingSet=$' 'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6$' 'ExecReload=.*kill -HUP'; do
    check "csg-consoled unit: $key" has_line systemd/csg-consoled.service "^$key"
done
exposure=$(systemd-analyze security --offline=true systemd/csg-consoled.service 2>/dev/null | sed -n 's/.*Overall exposure level for csg-consoled.service: \([0-9.]*\).*/\1/p')
check "csg-consoled unit: systemd-analyze security exposure $exposure <= 1.5" python3 -c "import sys; sys.exit(0 if float('${exposure:-99}') <= 1.5 else 1)"

echo "package checks: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
