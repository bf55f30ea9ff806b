#!/usr/bin/env python3
"""Prints the Debian mirror this machine's apt sources use for a suite (one-line and deb822
formats), or nothing when no source names it.

    scripts/lib/debian-mirror.py bookworm

The project names no mirror of its own: debootstrap takes the one the machine already uses.
Third-party repositories may name the same suite (Docker's does): a source signed by Debian's
archive keyring, or by no key of its own (the default keyring is Debian's), with the `main`
component, is taken before any other.
"""
import glob
import re
import sys

suite = sys.argv[1]


def one_line():
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
            options = ""
            if w[0].startswith("["):
                while w and not w[0].endswith("]"):
                    options += " " + w[0]
                    w = w[1:]
                options += " " + (w[0] if w else "")
                w = w[1:]
            m = re.search(r"signed-by=(\S+?)\]?(\s|$)", options)
            if len(w) >= 2:
                yield w[0], [w[1]], w[2:], m.group(1) if m else ""


def deb822():
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
                    yield uri, fields.get("suites", []), fields.get("components", []), \
                        " ".join(fields.get("signed-by", []))


def debian_signed(signed_by, components):
    return "main" in components and (not signed_by or "debian-archive-keyring" in signed_by)


found = [e for e in list(one_line()) + list(deb822()) if suite in e[1]]
best = [e for e in found if debian_signed(e[3], e[2])] or found
if best:
    print(best[0][0])
