# csg-console %post ($1 = 1 on install, 2 on upgrade). Fixed paths only.
if ! getent passwd csg-console >/dev/null; then
    useradd --system --user-group --home-dir /var/lib/csg-console --no-create-home \
        --shell /sbin/nologin --comment "csg console service" csg-console || :
fi
install -d -m 0750 -o root -g csg-console /etc/csg-console
chown root:csg-console /etc/csg-console/console.toml
chmod 0640 /etc/csg-console/console.toml
install -d -m 0700 -o csg-console -g csg-console /var/lib/csg-console
if [ "$1" -eq 1 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl enable csg-consoled.service >/dev/null 2>&1 || :
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 2 ] && systemctl is-active --quiet csg-consoled.service; then
        systemctl restart csg-consoled.service || :
    elif [ "$1" -eq 1 ]; then
        echo "csg-consoled: set the broker and identity in /etc/csg-console/console.toml, check it with 'csg-consoled check-config', then 'systemctl start csg-consoled'." >&2
    fi
fi
