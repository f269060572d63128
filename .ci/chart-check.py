#!/usr/bin/env python3
"""Renders the tickforge Helm chart and checks every manifest.

    chart-check.py CHART [--values NAME=FILE[@NAMESPACE]]... [--tickforge BIN] [--redis-server BIN]

The chart is rendered offline with Helm's own Go SDK (PyPI helm-python-sdk,
no helm binary) once with its defaults and once per --values file. For each
rendering:

- `helm lint --strict` finds nothing above "info";
- every manifest validates against the Kubernetes OpenAPI schemas (PyPI
  kubernetes-validate, strict: unknown fields are errors), for the oldest
  Kubernetes the chart supports and the newest the validator knows;
- the tickforge.toml of the ConfigMap is valid TOML holding no secret, and
  `tickforge check-config` (with --tickforge) accepts it;
- REDIS_URL only refers to $(REDIS_PASSWORD) after that variable is
  defined (Kubernetes expands $(VAR) only from earlier entries);
- terminationGracePeriodSeconds exceeds the drain deadline;
- the bundled Redis' redis.conf is accepted by a real redis-server (with
  --redis-server) and yields appendonly yes, appendfsync everysec,
  save 900 1 and maxmemory-policy noeviction.

Exits 1 with every failure listed, 0 when all renderings pass.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import helm_python as helm
import kubernetes_validate.utils as kv
import yaml

# The oldest Kubernetes the chart declares (Chart.yaml kubeVersion) and the
# newest the validator ships schemas for.
KUBE_VERSIONS = ["1.25.0", kv.latest_version()]
RELEASE = "tickforge"


class Failures:
    """Collects failures of one rendering, each prefixed with its name."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, case: str, message: str) -> None:
        self.lines.append(f"{case}: {message}")
        print(f"FAIL {case}: {message}", flush=True)


def render(chart: helm.Chart, values: dict, namespace: str) -> dict[str, str]:
    return chart.render(values=values, name=RELEASE, namespace=namespace, is_install=True)


def manifests(rendered: dict[str, str]) -> list[tuple[str, dict]]:
    """(template, object) for every YAML document of every template."""
    objects = []
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(text):
            if document is not None:
                objects.append((template, document))
    return objects


def name_of(obj: dict) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def check_schemas(case: str, objects: list[tuple[str, dict]], failures: Failures) -> None:
    for template, obj in objects:
        for version in KUBE_VERSIONS:
            try:
                kv.validate(obj, version, strict=True)
            except kv.ValidationError as error:
                path = ".".join(str(p) for p in error.path)
                failures.add(case, f"{template} {name_of(obj)} (Kubernetes {version}): {path}: {error.message}")
            except (kv.SchemaNotFoundError, kv.InvalidSchemaError) as error:
                failures.add(case, f"{template} {name_of(obj)} (Kubernetes {version}): {error.message}")


def find(objects: list[tuple[str, dict]], kind: str, component: str) -> list[dict]:
    return [
        obj
        for _, obj in objects
        if obj.get("kind") == kind
        and obj.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/component") == component
    ]


def check_tickforge(
    case: str,
    objects: list[tuple[str, dict]],
    tickforge: str | None,
    failures: Failures,
) -> None:
    configmaps = find(objects, "ConfigMap", "server")
    statefulsets = find(objects, "StatefulSet", "server")
    if len(configmaps) != 1 or len(statefulsets) != 1:
        failures.add(case, f"expected one tickforge ConfigMap and StatefulSet, got {len(configmaps)} and {len(statefulsets)}")
        return
    text = configmaps[0]["data"]["tickforge.toml"]
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        failures.add(case, f"tickforge.toml is not valid TOML: {error}\n{text}")
        return
    # Secrets reach the pod by environment only: no ticket secret, and no
    # Redis URL (it would carry the password) in the ConfigMap.
    leaks = [f"net.{key}" for key in ("secret", "secret_file") if key in config.get("net", {})]
    leaks += [f"storage.redis.{key}" for key in ("url", "urls") if key in config.get("storage", {}).get("redis", {})]
    if leaks:
        failures.add(case, f"tickforge.toml sets {', '.join(leaks)}; secrets go by environment only")

    pod = statefulsets[0]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = container.get("env", [])
    names = [entry["name"] for entry in env]
    for entry in env:
        value = entry.get("value", "")
        for index, other in enumerate(names):
            if f"$({other})" in value and index > names.index(entry["name"]):
                failures.add(case, f"env {entry['name']} uses $({other}) before it is defined")
    if "TICKFORGE_SECRET" not in names or "TICKFORGE_NODE_ID" not in names:
        failures.add(case, f"env lacks TICKFORGE_SECRET or TICKFORGE_NODE_ID: {names}")
    drain = config.get("server", {}).get("drain_seconds")
    grace = pod.get("terminationGracePeriodSeconds")
    if not isinstance(drain, int) or not isinstance(grace, int) or grace <= drain:
        failures.add(case, f"terminationGracePeriodSeconds {grace} must exceed [server] drain_seconds {drain}")
    probes = {
        kind: container.get(kind, {}).get("httpGet", {}).get("path")
        for kind in ("livenessProbe", "readinessProbe")
    }
    if probes != {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}:
        failures.add(case, f"probes: {probes}")

    if tickforge:
        check_config(case, text, env, tickforge, failures)


def check_config(case: str, text: str, env: list[dict], tickforge: str, failures: Failures) -> None:
    """Runs the real parser on the rendered file with the pod's plain env."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "tickforge.toml"
        path.write_text(text)
        process_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        for entry in env:
            if "value" in entry:
                process_env[entry["name"]] = entry["value"].replace("$(REDIS_PASSWORD)", "placeholder")
        # The secret comes from a Kubernetes Secret; any valid one will do.
        process_env["TICKFORGE_SECRET"] = "a-check-config-secret-of-32-bytes"
        result = subprocess.run(
            [tickforge, "--config", str(path), "check-config"],
            env=process_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            failures.add(
                case,
                f"tickforge check-config refused the ConfigMap's tickforge.toml (exit {result.returncode}): "
                f"{result.stderr.strip()}",
            )


def check_redis(case: str, objects: list[tuple[str, dict]], redis_server: str | None, failures: Failures) -> None:
    configmaps = find(objects, "ConfigMap", "redis")
    statefulsets = find(objects, "StatefulSet", "redis")
    if not configmaps:
        return
    if not statefulsets or not statefulsets[0]["spec"].get("volumeClaimTemplates"):
        failures.add(case, "the bundled Redis has no StatefulSet with a volumeClaimTemplate")
    if redis_server is None:
        return
    conf = configmaps[0]["data"]["redis.conf"]
    expected = {
        "appendonly": "yes",
        "appendfsync": "everysec",
        "save": "900 1",
        "maxmemory-policy": "noeviction",
    }
    with tempfile.TemporaryDirectory() as scratch:
        # The chart's file as is, but for where Redis writes (its `dir` line,
        # applied while the file is read) and listens (arguments).
        lines = conf.splitlines()
        dirs = [i for i, line in enumerate(lines) if line.startswith("dir ")]
        if len(dirs) != 1:
            failures.add(case, f"redis.conf has {len(dirs)} `dir` lines, expected 1")
            return
        lines[dirs[0]] = f"dir {scratch}"
        conf_path = Path(scratch) / "redis.conf"
        conf_path.write_text("\n".join(lines) + "\n")
        socket = Path(scratch) / "redis.sock"
        server = subprocess.Popen(
            [redis_server, str(conf_path), "--port", "0", "--unixsocket", str(socket)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 20
            while not socket.exists():
                if server.poll() is not None:
                    failures.add(case, f"redis-server refused the chart's redis.conf: {server.stdout.read().strip()}")
                    return
                if time.monotonic() > deadline:
                    failures.add(case, "redis-server with the chart's redis.conf did not open its socket in 20 s")
                    return
                time.sleep(0.05)
            for key, want in expected.items():
                got = subprocess.run(
                    ["redis-cli", "-s", str(socket), "--raw", "CONFIG", "GET", key],
                    capture_output=True,
                    text=True,
                    timeout=10,
                    check=False,
                ).stdout.split("\n")
                value = got[1] if len(got) > 1 else "(none)"
                if value != want:
                    failures.add(case, f"bundled Redis {key} is {value!r}, expected {want!r}")
        finally:
            server.terminate()
            server.wait(timeout=20)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chart", type=Path)
    parser.add_argument("--values", action="append", default=[], metavar="NAME=FILE[@NAMESPACE]")
    parser.add_argument("--tickforge", help="a tickforge binary: run check-config on each rendered tickforge.toml")
    parser.add_argument("--redis-server", help="a redis-server binary: start it with the bundled Redis' redis.conf")
    args = parser.parse_args()

    print(f"helm-python-sdk {helm.__version__} (Helm SDK {helm.helm_sdk_version()}), "
          f"kubernetes-validate schemas for Kubernetes {', '.join(KUBE_VERSIONS)}")
    cases = [("defaults", None, "tickforge")]
    for spec in args.values:
        name, _, rest = spec.partition("=")
        file, _, namespace = rest.partition("@")
        cases.append((name, Path(file), namespace or "tickforge"))

    failures = Failures()
    chart = helm.Chart.load(args.chart)
    try:
        for case, file, namespace in cases:
            values = helm.values_from_yaml(file.read_text()) if file else {}
            report = helm.lint(str(args.chart), values, strict=True, namespace=namespace)
            for message in report["messages"]:
                if message["severity"] >= 2:
                    failures.add(case, f"helm lint: {message['path']}: {message['error']}")
            for error in report["errors"]:
                failures.add(case, f"helm lint: {error}")
            try:
                rendered = render(chart, values, namespace)
            except helm.HelmError as error:
                failures.add(case, f"rendering failed: {error}")
                continue
            objects = manifests(rendered)
            check_schemas(case, objects, failures)
            check_tickforge(case, objects, args.tickforge, failures)
            check_redis(case, objects, args.redis_server, failures)
            kinds = ", ".join(sorted(name_of(obj) for _, obj in objects))
            print(f"{case}: rendered in namespace {namespace}: {kinds}")
    finally:
        chart.close()

    if failures.lines:
        print(f"\nchart check FAILED ({len(failures.lines)}):", file=sys.stderr)
        for line in failures.lines:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"chart check passed: {len(cases)} renderings, every manifest valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
