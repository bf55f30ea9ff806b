# csg-agent %preun ($1 = 0 on erase, 1 on upgrade): stop the agent only when it goes away.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl stop csg-agent.service >/dev/null 2>&1 || :
    systemctl disable csg-agent.service >/dev/null 2>&1 || :
fi
