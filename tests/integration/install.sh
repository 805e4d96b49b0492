#!/usr/bin/env bash
# meson install into a temporary DESTDIR: the binary, the man page and the systemd unit land
# where they should, the unit is Type=notify and hardened and checks the file before its reload
# signal, the man page documents every option --help lists, and the example configuration
# passes the installed binary's --check without a DNS query. Usage: install.sh BUILD_DIR
set -euo pipefail

build="$1"
src="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)"
example="$src/scripts/dist/uproxy.conf.example"
dest="$(mktemp -d "${TMPDIR:-/tmp}/uproxy-install.XXXXXX")"
trap 'rm -rf -- "$dest"' EXIT

meson install -C "$build" --destdir "$dest" --no-rebuild --quiet >/dev/null
prefix="$(meson introspect "$build" --buildoptions |
    python3 -c 'import json, sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"] == "prefix"))')"
bin="$dest$prefix/bin/uproxy"
man="$dest$prefix/share/man/man1/uproxy.1"
unit="$dest$prefix/lib/systemd/system/uproxy.service"
fail=0
for f in "$bin" "$man" "$unit"; do
    if [[ ! -f "$f" ]]; then
        echo "install.sh: not installed: ${f#"$dest"}"
        fail=1
    fi
done
((fail == 0)) || exit 1
"$bin" --version | grep -q '^uproxy ' || { echo "install.sh: installed binary does not run"; exit 1; }
for line in 'Type=notify' 'NoNewPrivileges=yes' 'ProtectSystem=strict' 'ExecReload=/bin/kill -HUP $MAINPID'; do
    grep -qxF -- "$line" "$unit" || { echo "install.sh: unit lacks '$line'"; fail=1; }
done
# The reload checks the file first, with ExecStart's --config, on a line before the signal
# (systemd runs ExecReload= lines in order and stops at the first that fails).
start_conf="$(sed -n 's|^ExecStart=[^ ]*/uproxy .*--config \([^ ]*\).*$|\1|p' "$unit")"
check_line="$(grep -nxE -- 'ExecReload=/[^ ]*/uproxy --check --config [^ ]+' "$unit" | head -n1 || true)"
kill_line="$(grep -nxF -- 'ExecReload=/bin/kill -HUP $MAINPID' "$unit" | head -n1 || true)"
if [[ -z $check_line ]]; then
    echo "install.sh: unit lacks 'ExecReload=.../uproxy --check --config FILE'"
    fail=1
elif [[ -z $start_conf || ${check_line##* } != "$start_conf" ]]; then
    echo "install.sh: unit's ExecReload= --check does not check ExecStart's --config '${start_conf}'"
    fail=1
elif [[ -n $kill_line && ${check_line%%:*} -gt ${kill_line%%:*} ]]; then
    echo "install.sh: unit's ExecReload= --check comes after the SIGHUP line"
    fail=1
fi
# The example names only IP literals, :PORT and unix: addresses, so its --check resolves
# nothing over the network.
while read -r key value; do
    value="${value%%,*}"
    if [[ ! $value =~ ^(unix:.+|\*?:[0-9]+|[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+:[0-9]+|\[[0-9A-Fa-f:.]+\]:[0-9]+)$ ]]; then
        echo "install.sh: $example: '$key $value' is not an IP literal (keep --check off DNS)"
        fail=1
    fi
done < <(sed -e 's/#.*//' -e 's/^[[:space:]]*\([a-z-]*\)[[:space:]]*=[[:space:]]*/\1 /' "$example" |
    awk '$1 == "listen" || $1 == "upstream" { print $1, $2 }')
if ! out="$(env -u LISTEN_FDS -u LISTEN_PID -u UPROXY_SOCKET_ACTIVATED \
    "$bin" --check --config "$example" 2>&1)" || [[ $out != "configuration OK" ]]; then
    echo "install.sh: uproxy --check --config scripts/dist/uproxy.conf.example failed:"
    echo "$out"
    fail=1
fi
while read -r opt; do
    esc="${opt//-/\\-}"
    grep -qF -- "$esc" "$man" || { echo "install.sh: man page does not document $opt"; fail=1; }
done < <("$bin" --help | grep -oE -- '--[a-z][a-z-]+' | sort -u)
((fail == 0)) && echo "install.sh: binary, man page and unit installed under $prefix; man page covers every option; the unit checks before reloading; the example passes --check"
exit "$fail"
