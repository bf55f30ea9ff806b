# csg-agent %post ($1 = 1 on install, 2 on upgrade). Fixed paths only.
install -d -m 0750 /etc/csg-agent
install -d -m 0700 /var/lib/csg-agent
# The kernel NFS backend's directory, which the unit can make writable only if it exists.
install -d -m 0755 /etc/exports.d
# Enabled on first install even when no systemd runs (an image built in a chroot):
# `systemctl enable` only makes links.
if [ "$1" -eq 1 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl enable csg-agent.service >/dev/null 2>&1 || :
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if /usr/bin/csg-agent check-config --config /etc/csg-agent/agent.toml >/dev/null 2>&1; then
        if [ "$1" -ge 2 ] && systemctl is-active --quiet csg-agent.service; then
            systemctl restart csg-agent.service || :
        else
            systemctl start csg-agent.service || :
        fi
    else
        echo "csg-agent: /etc/csg-agent/agent.toml is not complete yet; set identity.instance_id and mqtt.url, check it with 'csg-agent check-config', then 'systemctl start csg-agent'." >&2
    fi
fi
