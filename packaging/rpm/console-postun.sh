# csg-console %postun. Erasing keeps /var/lib/csg-console (the store) and a modified
# console.toml (as .rpmsave); remove them by hand to forget the fleet.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
