#!/bin/sh
# Install warren as a systemd service.
#
#   cargo build --release && sudo packaging/install.sh [target/release]
#
# Installs the binaries to $PREFIX/bin (default /usr), the example configuration to
# /etc/warren/warren.toml (kept if it exists), the unit, sysusers and tmpfiles files,
# then creates the user and directories. It does not enable or start the service:
#
#   sudo systemctl enable --now warren
#
# DESTDIR is honoured for packaging (then nothing is created or reloaded).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
bindir_src=${1:-$root/target/release}
PREFIX=${PREFIX:-/usr}
DESTDIR=${DESTDIR:-}
unitdir=${UNITDIR:-$PREFIX/lib/systemd/system}

for bin in warren warrenctl; do
    if [ ! -x "$bindir_src/$bin" ]; then
        echo "install.sh: $bindir_src/$bin not found; run 'cargo build --release' first" >&2
        exit 1
    fi
done

install -d "$DESTDIR$PREFIX/bin" "$DESTDIR$unitdir" \
    "$DESTDIR$PREFIX/lib/sysusers.d" "$DESTDIR$PREFIX/lib/tmpfiles.d" \
    "$DESTDIR/etc/warren" "$DESTDIR$PREFIX/share/doc/warren"
install -m 0755 "$bindir_src/warren" "$bindir_src/warrenctl" "$DESTDIR$PREFIX/bin/"
# The unit names /usr/bin/warren; follow PREFIX.
sed "s|/usr/bin/warren|$PREFIX/bin/warren|" "$here/systemd/warren.service" >"$DESTDIR$unitdir/warren.service"
chmod 0644 "$DESTDIR$unitdir/warren.service"
install -m 0644 "$here/systemd/warren.sysusers" "$DESTDIR$PREFIX/lib/sysusers.d/warren.conf"
install -m 0644 "$here/systemd/warren.tmpfiles" "$DESTDIR$PREFIX/lib/tmpfiles.d/warren.conf"
install -m 0644 "$root/README.md" "$DESTDIR$PREFIX/share/doc/warren/README.md"
if [ -e "$DESTDIR/etc/warren/warren.toml" ]; then
    echo "install.sh: keeping existing /etc/warren/warren.toml (new defaults: $PREFIX/share/doc/warren/warren.toml)"
else
    install -m 0644 "$root/config/warren.toml" "$DESTDIR/etc/warren/warren.toml"
fi
install -m 0644 "$root/config/warren.toml" "$DESTDIR$PREFIX/share/doc/warren/warren.toml"

if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
    systemd-sysusers "$PREFIX/lib/sysusers.d/warren.conf"
    systemd-tmpfiles --create "$PREFIX/lib/tmpfiles.d/warren.conf"
    systemctl daemon-reload
    echo "install.sh: installed; start with: systemctl enable --now warren"
else
    echo "install.sh: installed under '${DESTDIR:-/}'; systemd is not running here, so the user"
    echo "install.sh: and directories were not created (systemd-sysusers, systemd-tmpfiles do that)."
fi
