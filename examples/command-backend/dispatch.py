#!/usr/bin/env python3
"""Dispatch command for oz-agent-worker's command runtime: runs each task's
agent in a detached Docker container and returns at once.

The worker runs this with `sh -c` for every task it claims, with the task
as JSON on stdin (api-specs/command-dispatch-payload.schema.json, version 1).
Exit 0 means the task was durably handed over: the container was created and
started, the agent reports its own progress and result to the orchestrator,
and the worker frees the slot. Any other exit fails the task
(`dispatch_command`, with this script's last line of output as the message).
It must finish within the worker's `dispatch_timeout`.

What it does, as the worker's own docker runtime would:
  - each sidecar image (the agent at /agent first) is unpacked once into
    $OZ_DISPATCH_CACHE/sidecars/<image id>/ and bind-mounted, read-only
    unless the sidecar asks for read_write;
  - the container gets the task image (`docker_image`), a fresh /workspace,
    the task environment and `base_args` after /agent/entrypoint.sh (or
    after $OZ_AGENT_PROGRAM when no sidecar is mounted at /agent);
  - it is named oz-task-<run id>-<last 8 of the execution id> and labelled
    dev.oz.run-id / dev.oz.execution-id / dev.oz.worker-id, which is how
    cancel.py finds it.

Secrets: the task environment goes to the docker CLI through its own
environment (`-e NAME` without a value), never on a command line or disk.

Settings (environment; set them in the worker's `environment` list):
  OZ_DISPATCH_DOCKER   the docker CLI (default: docker). DOCKER_HOST and the
                       other DOCKER_* variables select the daemon as usual;
                       the daemon must run on this host (bind mounts).
  OZ_DISPATCH_CACHE    where unpacked sidecars are kept (default:
                       /var/lib/oz/dispatch)
  OZ_AGENT_PROGRAM     the agent program when no sidecar is at /agent
                       (default: oz, which the image must then provide)
  OZ_DISPATCH_KEEP=1   keep containers after they exit (default: --rm)
  OZ_DISPATCH_DRY_RUN=1  print the plan as JSON on stdout and run nothing
                       (no daemon needed): to check a payload or a setup.

Needs only Python 3's standard library and the docker CLI.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

PAYLOAD_VERSION = 1
AGENT_MOUNT = "/agent"


class DispatchError(Exception):
    """A failure to report on stderr; the worker quotes the last line."""


def docker_cli():
    return os.environ.get("OZ_DISPATCH_DOCKER", "docker")


def run(args, **kwargs):
    """Runs a docker command; its stderr is kept for the error message."""
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise DispatchError(
            f"`{' '.join(args[:3])} …` failed ({result.returncode}): "
            f"{detail[-1] if detail else 'no output'}"
        )
    return result.stdout.strip()


def safe(value, limit):
    """Characters Docker accepts in a container name."""
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", value)[:limit].strip("-.") or "x"


def container_name(payload):
    name = "oz-task-" + safe(payload["run_id"], 80)
    execution = payload.get("execution_id") or ""
    if execution:
        name += "-" + safe(execution[-8:], 8)
    return name


def image_id(image):
    """The local image id of `image`, pulling it when it is missing."""
    docker = docker_cli()
    try:
        return run([docker, "image", "inspect", "--format", "{{.Id}}", image])
    except DispatchError:
        run([docker, "pull", "--quiet", image])
        return run([docker, "image", "inspect", "--format", "{{.Id}}", image])


def unpack_sidecar(image, cache):
    """The folder holding `image`'s filesystem, unpacked once per image id.

    Unpacked into a temporary folder and renamed into place, so a
    concurrent dispatch never mounts a half-filled folder."""
    docker = docker_cli()
    digest = image_id(image).split(":")[-1]
    target = os.path.join(cache, "sidecars", digest)
    if os.path.isdir(target):
        return target
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=os.path.dirname(target))
    # `true` is never run: a created container is only needed for export.
    cid = run([docker, "create", image, "true"])
    try:
        export = subprocess.Popen([docker, "export", cid], stdout=subprocess.PIPE)
        untar = subprocess.run(
            ["tar", "-x", "--no-same-owner", "-C", staging],
            stdin=export.stdout,
            capture_output=True,
            text=True,
        )
        export.stdout.close()
        if export.wait() != 0 or untar.returncode != 0:
            raise DispatchError(
                f"cannot unpack sidecar {image}: {untar.stderr.strip() or 'docker export failed'}"
            )
        os.chmod(staging, 0o755)
        try:
            os.rename(staging, target)
        except OSError:
            # Another dispatch got there first: its copy is as good.
            if not os.path.isdir(target):
                raise
    finally:
        subprocess.run([docker, "rm", "-f", cid], capture_output=True)
        shutil.rmtree(staging, ignore_errors=True)
    return target


def plan(payload, dry_run):
    """The `docker run` command line and its environment."""
    if payload.get("version") != PAYLOAD_VERSION:
        raise DispatchError(
            f"payload version {payload.get('version')!r} is not {PAYLOAD_VERSION}; "
            "update this dispatcher for the worker's new format"
        )
    cache = os.environ.get("OZ_DISPATCH_CACHE", "/var/lib/oz/dispatch")
    args = [
        docker_cli(), "run", "--detach",
        "--name", container_name(payload),
        "--label", f"dev.oz.run-id={payload['run_id']}",
        "--label", f"dev.oz.execution-id={payload.get('execution_id') or ''}",
        "--label", f"dev.oz.worker-id={payload.get('worker_id') or ''}",
        "--workdir", "/workspace",
        "--mount", "type=volume,destination=/workspace",
    ]
    if os.environ.get("OZ_DISPATCH_KEEP") != "1":
        args.append("--rm")
    program = os.environ.get("OZ_AGENT_PROGRAM", "oz")
    for sidecar in payload.get("sidecars") or []:
        source = (
            f"<{cache}/sidecars/image id of {sidecar['image']}>"
            if dry_run
            else unpack_sidecar(sidecar["image"], cache)
        )
        mode = "rw" if sidecar.get("read_write") else "ro"
        args += ["--volume", f"{source}:{sidecar['mount_path']}:{mode}"]
        if sidecar["mount_path"] == AGENT_MOUNT:
            program = AGENT_MOUNT + "/entrypoint.sh"
    env = dict(payload.get("env") or {})
    for name in env:
        args += ["--env", name]  # the value comes from the CLI's environment
    args += ["--", payload["docker_image"], program] + list(payload["base_args"])
    return args, env


def main():
    try:
        payload = json.load(sys.stdin)
    except json.JSONDecodeError as e:
        print(f"the dispatch payload on stdin is not JSON: {e}", file=sys.stderr)
        return 2
    dry_run = os.environ.get("OZ_DISPATCH_DRY_RUN") == "1"
    try:
        args, env = plan(payload, dry_run)
        if dry_run:
            json.dump({"docker_run": args, "env_names": sorted(env)}, sys.stdout, indent=2)
            print()
            return 0
        container = run(args, env={**os.environ, **env})
    except DispatchError as e:
        print(f"dispatch of {payload.get('run_id')}: {e}", file=sys.stderr)
        return 1
    print(f"dispatched {payload['run_id']} to container {container[:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
