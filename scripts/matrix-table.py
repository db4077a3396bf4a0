#!/usr/bin/env python3
"""The README's daemon matrix table, from a `cargo test` log.

    scripts/matrix-table.py [--write | --check] [CARGO_TEST_LOG [README]]

CARGO_TEST_LOG defaults to target/test-run.log (scripts/test.sh's last run),
README to the repository's README.md.

Which daemon a test ran against is read from its name: the first path
segment below the test's file is the engine's key (`docker::scenario`,
`docker28::json_report`) or starts with the key and an underscore
(`docker_tls::wrong_ca` ran against dockerd 20.10 over TLS). Tests named
otherwise are not daemon tests and are left out. The suite is the test's
file: `Running tests/NAME.rs` for a one-file binary, and for a folder
binary (`Running tests/DIR/main.rs`) the module below it, shown as
`DIR/MODULE` (tests/worker/e2e.rs is `worker/e2e`, test
`e2e::docker::scenario`). Column headings are the versions the daemons
report now (GET /version on the sockets of $OZ_TEST_*_HOST), so the table
says which daemon versions passed which suite.

Running tests changes no tracked file, so by default the table is only
written to target/daemon-matrix.md and the script says whether the README's
table differs. `--write` puts it between the two marker lines in README
(nothing else in the file changes): the explicit way to update the README
after a run. `--check` exits 1 when the README's table has other columns
(daemons and their versions) than the run found; its counts, its suites and
its "Last run" line may differ, since they change with every run and every
added test, while a daemon version the README names and the run did not
test is a false claim. Exits 2 when README has no markers or the log
cannot be read.
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
FOLDER_BINARY = "/main"
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
            suite = m.group(1)
            continue
        m = RESULT.match(line)
        if not m or suite is None:
            continue
        test = m.group(1)
        if suite.endswith(FOLDER_BINARY):
            # tests/DIR/main.rs: the file is the first module of the name.
            if "::" not in test:
                continue
            module, test = test.split("::", 1)
            name = "%s/%s" % (os.path.basename(suite[: -len(FOLDER_BINARY)]), module)
        else:
            name = os.path.basename(suite)
        engine = engine_of(test)
        if engine is None:
            continue
        counts = suites.setdefault(name, {}).setdefault(engine, [0, 0, 0])
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


def table_in(text):
    """The table between the README's markers, or None without markers."""
    start = text.find(START)
    end = text.find(END)
    if start < 0 or end < start:
        return None
    return text[text.index("\n", start) + 1:end].strip("\n")


def columns(table_text):
    """The column headings (daemons and versions) of a table."""
    for line in table_text.splitlines():
        if line.startswith("| suite |"):
            return [c.strip() for c in line.strip().strip("|").split("|")[1:]]
    return []


def main():
    args = sys.argv[1:]
    mode = None
    if args and args[0] in ("--write", "--check"):
        mode = args.pop(0)
    if len(args) > 2 or any(a.startswith("-") for a in args):
        sys.exit(__doc__)
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    log = args[0] if args else os.path.join(root, "target", "test-run.log")
    readme = args[1] if len(args) == 2 else os.path.join(root, "README.md")
    try:
        with open(log, encoding="utf-8", errors="replace") as f:
            suites = parse(f)
    except OSError as e:
        print("[matrix-table] cannot read the test log %s: %s (run scripts/test.sh first)"
              % (log, e), file=sys.stderr)
        sys.exit(2)
    new_table = table(suites)
    out = os.path.join(os.path.dirname(os.path.abspath(log)), "daemon-matrix.md")
    with open(out, "w", encoding="utf-8") as f:
        f.write(new_table + "\n")
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    old_table = table_in(text)
    if old_table is None:
        print("[matrix-table] %s has no daemon matrix markers (%s ... %s)"
              % (readme, START, END), file=sys.stderr)
        sys.exit(2)
    # The "Last run" line carries the time: compare the rest.
    same = old_table.split("\n", 1)[-1:] == new_table.split("\n", 1)[-1:]
    print("[matrix-table] %s: %d suites; the README's table %s" % (
        out, len(suites),
        "is the same" if same else
        "differs (update it with scripts/matrix-table.py --write)"), file=sys.stderr)
    if mode == "--write" and old_table != new_table:
        start_line_end = text.index("\n", text.find(START)) + 1
        new = text[:start_line_end] + new_table + "\n\n" + text[text.find(END):]
        with open(readme + ".tmp", "w", encoding="utf-8") as f:
            f.write(new)
        os.replace(readme + ".tmp", readme)
        print("[matrix-table] wrote the table into %s" % readme, file=sys.stderr)
    if mode == "--check":
        found, listed = columns(new_table), columns(old_table)
        if found != listed:
            print("[matrix-table] the README's daemon matrix names other daemons than this "
                  "run tested:\n  README: %s\n  run:    %s\nRun scripts/matrix-table.py "
                  "--write after a passing run and commit README.md."
                  % (" | ".join(listed), " | ".join(found)), file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
