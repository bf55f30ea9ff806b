# csg-agent %preun ($1 = 0 on erase, 1 on upgrade): stop the agent only when it goes away.
if [ "$1" -eq 0 ]; then
    if [ -d /run/systemd/system ]; then
        systemctl stop csg-agent.service >/dev/null 2>&1 || :
    fi
    # Links go with the package even in a chroot, where %post made them without systemd.
    if command -v systemctl >/dev/null 2>&1; then
        systemctl disable csg-agent.service >/dev/null 2>&1 || :
    fi
fi
