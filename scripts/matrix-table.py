#!/usr/bin/env python3
"""Writes the README's daemon matrix table from a `cargo test` log.

    scripts/matrix-table.py CARGO_TEST_LOG [README]

Which daemon a test ran against is read from its name: the first path
segment is the engine's key (`docker::scenario`, `docker28::json_report`)
or starts with the key and an underscore (`docker_tls::wrong_ca` ran
against dockerd 20.10 over TLS). Tests named otherwise are not daemon
tests and are left out. The suite is the test binary (`Running
tests/NAME.rs`). Column headings are the versions the daemons report now
(GET /version on the sockets of $OZ_TEST_*_HOST), so the table says which
daemon versions passed which suite.

The table goes between the two marker lines in README; nothing else in the
file changes. Exits non-zero only if the README has no markers.
"""

import datetime
import http.client
import json
import os
import re
import socket
import sys

START = "<!-- daemon-matrix:start"
END = "<!-- daemon-matrix:end -->"

# key, environment variable with its DOCKER_HOST, default, name when down
ENGINES = [
    ("docker", "OZ_TEST_DOCKER_HOST", "unix:///var/run/docker.sock", "dockerd 20.10"),
    ("podman", "OZ_TEST_PODMAN_HOST", "unix:///run/podman/podman.sock", "Podman 4"),
    ("docker26", "OZ_TEST_DOCKER26_HOST",
     "unix:///var/lib/oz-worker-test/daemons/docker26/docker.sock", "Docker 26"),
    ("docker28", "OZ_TEST_DOCKER28_HOST",
     "unix:///var/lib/oz-worker-test/daemons/docker28/docker.sock", "Docker 28"),
    ("podman5", "OZ_TEST_PODMAN5_HOST",
     "unix:///var/lib/oz-worker-test/daemons/podman5/podman.sock", "Podman 5"),
]

RUNNING = re.compile(r"^\s*Running (?:tests/)?(\S+?)(?:\.rs)? \(")
RESULT = re.compile(r"^test (\S+) \.\.\. (ok|FAILED|ignored)\b")


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=5)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(self.path)


def daemon_heading(host, fallback):
    """'Docker 28.5.2 (API 1.51)' from the daemon's /version, or the fallback."""
    if not host.startswith("unix://"):
        return fallback + " (down)"
    try:
        conn = UnixHTTPConnection(host[len("unix://"):])
        conn.request("GET", "/version")
        resp = conn.getresponse()
        v = json.loads(resp.read())
        conn.close()
    except (OSError, ValueError, http.client.HTTPException):
        return fallback + " (down)"
    components = {c.get("Name"): c.get("Version") for c in v.get("Components") or []}
    if "Podman Engine" in components:
        name = "Podman " + components["Podman Engine"]
    elif fallback.startswith("dockerd"):
        name = "dockerd " + v.get("Version", "?")
    else:
        name = "Docker " + v.get("Version", "?")
    return "%s (API %s)" % (name, v.get("ApiVersion", "?"))


def engine_of(test):
    # Only a module path names an engine: a top-level test whose own name
    # starts with "docker_" (faults::docker_daemon_...) is not one.
    if "::" not in test:
        return None
    first = test.split("::", 1)[0]
    for key, *_ in ENGINES:
        if first == key or first.startswith(key + "_"):
            return key
    return None


def parse(log):
    """{suite: {engine: [passed, failed, ignored]}}, in order of appearance."""
    suites = {}
    suite = None
    for line in log:
        m = RUNNING.match(line)
        if m:
            suite = os.path.basename(m.group(1))
            continue
        m = RESULT.match(line)
        if not m or suite is None:
            continue
        engine = engine_of(m.group(1))
        if engine is None:
            continue
        counts = suites.setdefault(suite, {}).setdefault(engine, [0, 0, 0])
        counts[("ok", "FAILED", "ignored").index(m.group(2))] += 1
    return suites


def cell(counts):
    if counts is None:
        return "—"
    passed, failed, ignored = counts
    ran = passed + failed
    text = "%s %d/%d" % ("❌" if failed else "✅", passed, ran)
    if failed:
        text += " (%d failed)" % failed
    if ignored:
        text += ", %d ignored" % ignored
    return text


def table(suites):
    headings = [
        daemon_heading(os.environ.get(var) or default, name)
        for _, var, default, name in ENGINES
    ]
    total = sum(sum(c[0] + c[1] for c in e.values()) for e in suites.values())
    failed = sum(sum(c[1] for c in e.values()) for e in suites.values())
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if os.environ.get("CI") == "true":
        skips = "CI=true: a daemon that is down fails its tests"
    else:
        skips = "outside CI a test whose daemon is down passes as skipped"
    lines = [
        "Last run: %s, %d daemon tests, %s (%s)." % (
            when, total, "all passed" if failed == 0 else "%d failed" % failed, skips),
        "",
        "| suite | " + " | ".join(headings) + " |",
        "| --- |" + " --- |" * len(headings),
    ]
    for suite, engines in suites.items():
        lines.append("| `%s` | %s |" % (
            suite, " | ".join(cell(engines.get(key)) for key, *_ in ENGINES)))
    return "\n".join(lines)


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    readme = sys.argv[2] if len(sys.argv) == 3 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "README.md")
    with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
        suites = parse(f)
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    start = text.find(START)
    end = text.find(END)
    if start < 0 or end < start:
        sys.exit("%s has no daemon matrix markers (%s ... %s)" % (readme, START, END))
    start_line_end = text.index("\n", start) + 1
    new = text[:start_line_end] + table(suites) + "\n\n" + text[end:]
    if new != text:
        with open(readme + ".tmp", "w", encoding="utf-8") as f:
            f.write(new)
        os.replace(readme + ".tmp", readme)
    print("[matrix-table] %s: %d suites" % (readme, len(suites)), file=sys.stderr)


if __name__ == "__main__":
    main()
