#!/usr/bin/env bash
# meson install into a temporary DESTDIR: the binary, the man page and the systemd unit land
# where they should, the unit is Type=notify and hardened, and the man page documents every
# option --help lists. Usage: install.sh BUILD_DIR
set -euo pipefail

build="$1"
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
while read -r opt; do
    esc="${opt//-/\\-}"
    grep -qF -- "$esc" "$man" || { echo "install.sh: man page does not document $opt"; fail=1; }
done < <("$bin" --help | grep -oE -- '--[a-z][a-z-]+' | sort -u)
((fail == 0)) && echo "install.sh: binary, man page and unit installed under $prefix; man page covers every option"
exit "$fail"
