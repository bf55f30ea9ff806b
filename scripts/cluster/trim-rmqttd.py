#!/usr/bin/env python3
"""Leaves the plugins the cluster test does not use out of rmqttd's published Cargo.toml.

rmqttd registers every plugin listed under [package.metadata.plugins.*] (its build.rs generates
the registration code from that table), so a plugin is left out by removing both its
[package.metadata.plugins.NAME] and its [dependencies.NAME] sections. Everything else stays as
published.
"""
import sys

KEEP = {
    "rmqtt-acl",
    "rmqtt-retainer",
    "rmqtt-counter",
    "rmqtt-http-api",
    "rmqtt-shared-subscription",
    "rmqtt-sys-topic",
    "rmqtt-cluster-raft",
    "rmqtt-cluster-broadcast",
}


def section_plugin(header: str):
    """The plugin a section header belongs to, or None for any other section."""
    name = header.strip()[1:-1]
    for prefix in ("package.metadata.plugins.", "dependencies."):
        if name.startswith(prefix):
            rest = name[len(prefix):]
            if rest.startswith("rmqtt-") and rest not in ("rmqtt-conf", "rmqtt-net"):
                return rest
    return None


def main(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    out, dropping, dropped = [], False, set()
    for line in lines:
        if line.startswith("["):
            plugin = section_plugin(line)
            dropping = plugin is not None and plugin != "rmqtt" and plugin not in KEEP
            if dropping:
                dropped.add(plugin)
        if not dropping:
            out.append(line)
    if not dropped:
        sys.exit(f"{path}: no plugin section found; the crate's layout changed")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(out)
    print("left out:", ", ".join(sorted(dropped)))


if __name__ == "__main__":
    main(sys.argv[1])
