#!/usr/bin/env python3
"""Cancel command for oz-agent-worker's command runtime, the pair of
dispatch.py: stops and removes the container that dispatch.py started for
a run, when the orchestrator cancels it.

The worker runs this with `sh -c` with OZ_RUN_ID and OZ_EXECUTION_ID set
(OZ_EXECUTION_ID may be empty). It has 10 seconds; a failure is only logged
by the worker. The container is found by its labels, so this works after a
worker restart too.

Settings (environment):
  OZ_DISPATCH_DOCKER   the docker CLI (default: docker)
  OZ_CANCEL_GRACE      seconds between SIGTERM and SIGKILL (default: 5)
"""

import os
import subprocess
import sys


def main():
    run_id = os.environ.get("OZ_RUN_ID")
    if not run_id:
        print("OZ_RUN_ID is not set: run this as the worker's cancel_command", file=sys.stderr)
        return 2
    docker = os.environ.get("OZ_DISPATCH_DOCKER", "docker")
    filters = ["--filter", f"label=dev.oz.run-id={run_id}"]
    execution = os.environ.get("OZ_EXECUTION_ID")
    if execution:
        filters += ["--filter", f"label=dev.oz.execution-id={execution}"]
    found = subprocess.run(
        [docker, "ps", "--all", "--quiet", *filters], capture_output=True, text=True
    )
    if found.returncode != 0:
        print(f"cannot list containers: {found.stderr.strip()}", file=sys.stderr)
        return 1
    containers = found.stdout.split()
    if not containers:
        print(f"no container for {run_id}: it already ended")
        return 0
    grace = os.environ.get("OZ_CANCEL_GRACE", "5")
    subprocess.run([docker, "stop", "--time", grace, *containers], capture_output=True)
    removed = subprocess.run(
        [docker, "rm", "--force", *containers], capture_output=True, text=True
    )
    # A container started with --rm may be gone already: that is success.
    left = subprocess.run(
        [docker, "ps", "--all", "--quiet", *filters], capture_output=True, text=True
    ).stdout.split()
    if left:
        print(f"cannot remove {' '.join(left)}: {removed.stderr.strip()}", file=sys.stderr)
        return 1
    print(f"cancelled {run_id}: removed {' '.join(c[:12] for c in containers)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
