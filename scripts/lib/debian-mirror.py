#!/usr/bin/env python3
"""Prints the Debian mirror this machine's apt sources use for a suite (one-line and deb822
formats), or nothing when no source names it.

    scripts/lib/debian-mirror.py bookworm

The project names no mirror of its own: debootstrap takes the one the machine already uses.
"""
import glob, re, sys
suite = sys.argv[1]
def entries():
    for f in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
        try:
            lines = open(f).read().splitlines()
        except OSError:
            continue
        for line in lines:
            w = line.split("#", 1)[0].split()
            if len(w) < 3 or w[0] != "deb":
                continue
            w = w[1:]
            if w[0].startswith("["):
                while w and not w[0].endswith("]"):
                    w = w[1:]
                w = w[1:]
            if len(w) >= 2:
                yield w[0], [w[1]]
    for f in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        try:
            text = open(f).read()
        except OSError:
            continue
        for para in re.split(r"\n\s*\n", text):
            fields = {}
            for line in para.splitlines():
                if line.startswith("#") or ":" not in line or line[0].isspace():
                    continue
                k, v = line.split(":", 1)
                fields[k.strip().lower()] = v.split()
            if "deb" in fields.get("types", []) and fields.get("enabled", ["yes"])[0].lower() != "no":
                for uri in fields.get("uris", []):
                    yield uri, fields.get("suites", [])
for uri, suites in entries():
    if suite in suites:
        print(uri)
        break
