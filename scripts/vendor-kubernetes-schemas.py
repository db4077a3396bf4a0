#!/usr/bin/env python3
"""Refreshes api-specs/kubernetes/v1.33.0-strict/ from PyPI's kubernetes-validate.

Usage: scripts/vendor-kubernetes-schemas.py [PYTHON]

PYTHON is a Python with `kubernetes-validate` installed (default: the test
environment's venv, $OZ_TEST_ROOT/k8s-venv/bin/python; scripts/test.sh
creates it). The per-kind files are copied unchanged; `_definitions.json`
keeps only the definitions those kinds reach through `$ref` (the package's
file holds every API group, 1.3 MB), so the vendored set is self-contained
and reviewable. Running it twice gives the same bytes.
"""
import json
import os
import re
import subprocess
import sys

VERSION = "v1.33.0-local-strict"
# The kinds the deployment manifests, the kubernetes runtime and the test API
# server send or receive (lists and discovery documents included, so the test
# API server's own answers can be checked too).
KINDS = [
    "configmap-v1.json",
    "deleteoptions-meta-v1.json",
    "deployment-apps-v1.json",
    "event-v1.json",
    "eventlist-v1.json",
    "job-batch-v1.json",
    "joblist-batch-v1.json",
    "namespace-v1.json",
    "pod-v1.json",
    "podlist-v1.json",
    "role-rbac-v1.json",
    "rolebinding-rbac-v1.json",
    "secret-v1.json",
    "service-v1.json",
    "serviceaccount-v1.json",
    "status-meta-v1.json",
    "watchevent-meta-v1.json",
    "apigrouplist-meta-v1.json",
    "apiresourcelist-meta-v1.json",
    "apiversions-meta-v1.json",
]
REF = re.compile(r'#/\$defs/([^"]+)"')


def main() -> int:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    test_root = os.environ.get("OZ_TEST_ROOT", "/var/lib/oz-worker-test")
    python = sys.argv[1] if len(sys.argv) > 1 else f"{test_root}/k8s-venv/bin/python"
    pkg = subprocess.check_output(
        [python, "-c", "import kubernetes_validate, os; print(os.path.dirname(kubernetes_validate.__file__))"],
        text=True,
    ).strip()
    version = subprocess.check_output(
        [python, "-c", "import importlib.metadata as m; print(m.version('kubernetes-validate'))"], text=True
    ).strip()
    src = os.path.join(pkg, "kubernetes-json-schema", VERSION)
    dst = os.path.join(root, "api-specs", "kubernetes", "v1.33.0-strict")
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(src, "_definitions.json")) as f:
        definitions = json.load(f)
    todo = set()
    for name in KINDS:
        with open(os.path.join(src, name)) as f:
            text = f.read()
        todo |= set(REF.findall(text))
        with open(os.path.join(dst, name), "w") as f:
            f.write(text)
    keep = set()
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep.add(name)
        todo |= set(REF.findall(json.dumps(definitions["$defs"][name])))
    pruned = dict(definitions)
    pruned["$defs"] = {k: v for k, v in sorted(definitions["$defs"].items()) if k in keep}
    with open(os.path.join(dst, "_definitions.json"), "w") as f:
        json.dump(pruned, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"kubernetes-validate {version}: {len(KINDS)} kinds, {len(keep)} definitions -> {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
