#!/usr/bin/env python3
"""Renders the tickforge Helm chart and checks every manifest.

    chart-check.py CHART [--values NAME=FILE[@NAMESPACE]]... [--fleet NAME=MODE]...
                   [--tickforge BIN] [--redis-server BIN]

The chart is rendered offline with Helm's own Go SDK (PyPI helm-python-sdk,
no helm binary) once with its defaults and once per --values file. For each
rendering:

- `helm lint --strict` finds nothing above "info";
- every manifest validates against the Kubernetes OpenAPI schemas (PyPI
  kubernetes-validate, strict: unknown fields are errors), for the oldest
  Kubernetes the chart supports and the newest the validator knows;
- the tickforge.toml of the ConfigMap is valid TOML holding no secret, and
  `tickforge check-config` (with --tickforge) accepts it with the first
  pod's environment (a fleet pod's node id and address included);
- an env value refers to $(VAR) (REDIS_URL to $(REDIS_PASSWORD), a fleet
  pod's address to its downward API variables) only after VAR is defined:
  Kubernetes expands $(VAR) only from earlier entries;
- terminationGracePeriodSeconds exceeds the drain deadline;
- a single node (every rendering not named by --fleet) is a Deployment of
  at most one pod, replaced with strategy Recreate, with no node id;
- a fleet (--fleet NAME=hostPort or perPodService) is a StatefulSet on Redis
  with a headless Service and [fleet] lease_ttl_ms and max_matches; for each
  pod, with the downward API stood in for, TICKFORGE_NODE_ID is the pod
  name and TICKFORGE_PUBLIC_ADDR expands to a host:port of its own that
  reaches it: the quic hostPort on its Kubernetes node's IP or name, or a
  LoadBalancer/NodePort Service selecting that pod alone
  (statefulset.kubernetes.io/pod-name) and named in the address;
- the bundled Redis' redis.conf is accepted by a real redis-server (with
  --redis-server) and yields appendonly yes, appendfsync everysec,
  save 900 1 and maxmemory-policy noeviction.

Then value sets the chart must refuse (a fleet without Redis, replicas
without a fleet, a per-pod address naming no pod, ...) fail to render with
the message that says why.

Exits 1 with every failure listed, 0 when all renderings pass.
"""

from __future__ import annotations

import argparse
import os
import re
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


# What the downward API gives a pod, for the stand-in pods the checks build:
# pod `ordinal` of workload `name` on Kubernetes node k8s-node-<ordinal>.
DOWNWARD_API = {
    "metadata.name": lambda pod, ordinal, namespace: pod,
    "metadata.namespace": lambda pod, ordinal, namespace: namespace,
    "spec.nodeName": lambda pod, ordinal, namespace: f"k8s-node-{ordinal}",
    "status.hostIP": lambda pod, ordinal, namespace: f"10.0.0.{10 + ordinal}",
    "status.podIP": lambda pod, ordinal, namespace: f"10.1.0.{10 + ordinal}",
}
# Any value from a Secret: long enough for a ticket secret, URL-safe.
SECRET_STAND_IN = "a-check-config-secret-of-32-bytes"
POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
HOST_PORT = re.compile(r"^[^\s:$()]+:(\d+)$")


def expand(value: str, defined: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: from earlier entries only; $$ escapes;
    an undefined reference stays as written."""

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return defined.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", replace, value)


def pod_env(
    case: str, env: list[dict], pod: str, ordinal: int, namespace: str, failures: Failures
) -> dict[str, str]:
    """The container environment Kubernetes builds for one pod, with Secret
    values replaced by a stand-in."""
    resolved: dict[str, str] = {}
    for entry in env:
        name = entry["name"]
        source = entry.get("valueFrom", {})
        if "value" in entry:
            resolved[name] = expand(str(entry["value"]), resolved)
        elif "fieldRef" in source:
            path = source["fieldRef"].get("fieldPath")
            if path not in DOWNWARD_API:
                failures.add(case, f"env {name}: no stand-in for the downward API field {path}")
                continue
            resolved[name] = DOWNWARD_API[path](pod, ordinal, namespace)
        elif "secretKeyRef" in source:
            resolved[name] = SECRET_STAND_IN
        else:
            failures.add(case, f"env {name}: unexpected source {source}")
    return resolved


def check_tickforge(
    case: str,
    objects: list[tuple[str, dict]],
    namespace: str,
    fleet_mode: str | None,
    tickforge: str | None,
    failures: Failures,
) -> None:
    """The tickforge ConfigMap and workload: a single node (Deployment) unless
    `fleet_mode` names the fleet's public-address mode (StatefulSet)."""
    configmaps = find(objects, "ConfigMap", "server")
    workloads = find(objects, "Deployment", "server") + find(objects, "StatefulSet", "server")
    if len(configmaps) != 1 or len(workloads) != 1:
        failures.add(case, f"expected one tickforge ConfigMap and workload, got {len(configmaps)} and {len(workloads)}")
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

    workload = workloads[0]
    pod = workload["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = container.get("env", [])
    names = [entry["name"] for entry in env]
    for entry in env:
        value = entry.get("value", "")
        for index, other in enumerate(names):
            if f"$({other})" in value and index > names.index(entry["name"]):
                failures.add(case, f"env {entry['name']} uses $({other}) before it is defined")
    if "TICKFORGE_SECRET" not in names:
        failures.add(case, f"env lacks TICKFORGE_SECRET: {names}")
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

    if fleet_mode is None:
        pod_envs = check_single_node(case, objects, workload, config, names, namespace, failures)
    else:
        pod_envs = check_fleet(case, objects, workload, config, fleet_mode, namespace, failures)

    if tickforge and pod_envs:
        # The real parser on the rendered file, as the first pod sees it.
        check_config(case, text, pod_envs[0], tickforge, failures)


def per_pod_services(objects: list[tuple[str, dict]]) -> list[dict]:
    return [
        obj
        for _, obj in objects
        if obj.get("kind") == "Service" and POD_NAME_LABEL in (obj.get("spec", {}).get("selector") or {})
    ]


def check_single_node(
    case: str,
    objects: list[tuple[str, dict]],
    workload: dict,
    config: dict,
    names: list[str],
    namespace: str,
    failures: Failures,
) -> list[dict[str, str]]:
    """One node outside any fleet: a Deployment of at most one pod that is
    replaced, never doubled, and carries no node id."""
    spec = workload["spec"]
    if workload["kind"] != "Deployment":
        failures.add(case, f"a single node runs as a Deployment, not a {workload['kind']}")
        return []
    if spec.get("replicas", 1) not in (0, 1):
        failures.add(case, f"a single node has replicas 0 or 1, not {spec.get('replicas')}")
    if spec.get("strategy", {}).get("type") != "Recreate":
        failures.add(case, f"a single node's Deployment must use strategy Recreate, not {spec.get('strategy')}")
    fleet_env = [name for name in ("TICKFORGE_NODE_ID", "TICKFORGE_PUBLIC_ADDR") if name in names]
    if fleet_env or "fleet" in config:
        failures.add(case, f"a single node joins no fleet, but has env {fleet_env} and [fleet] {config.get('fleet')}")
    if per_pod_services(objects):
        failures.add(case, "a single node has per-pod Services")
    container = spec["template"]["spec"]["containers"][0]
    return [pod_env(case, container.get("env", []), f"{workload['metadata']['name']}-5d8f7c9b4-x2x7q", 0, namespace, failures)]


def check_fleet(
    case: str,
    objects: list[tuple[str, dict]],
    workload: dict,
    config: dict,
    mode: str,
    namespace: str,
    failures: Failures,
) -> list[dict[str, str]]:
    """A fleet: a StatefulSet on Redis whose pods take their names as node ids
    and each advertise an address of their own that reaches them (a host port,
    or a Service selecting that one pod)."""
    if workload["kind"] != "StatefulSet":
        failures.add(case, f"a fleet runs as a StatefulSet, not a {workload['kind']}")
        return []
    spec = workload["spec"]
    name = workload["metadata"]["name"]
    replicas = spec.get("replicas", 1)
    template = spec["template"]
    container = template["spec"]["containers"][0]
    env = container.get("env", [])
    by_name = {entry["name"]: entry for entry in env}
    pod_labels = template["metadata"].get("labels", {})

    fleet = config.get("fleet", {})
    if not isinstance(fleet.get("lease_ttl_ms"), int) or not isinstance(fleet.get("max_matches"), int):
        failures.add(case, f"[fleet] needs lease_ttl_ms and max_matches, got {fleet}")
    if "node_id" in fleet or "public_addr" in fleet:
        failures.add(case, f"[fleet] in the ConfigMap names a node ({fleet}); each pod's come by environment")
    if config.get("storage", {}).get("backend") != "redis" or "REDIS_URL" not in by_name:
        failures.add(case, "a fleet needs storage.backend redis and REDIS_URL")
    node_id = by_name.get("TICKFORGE_NODE_ID", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    if node_id != "metadata.name":
        failures.add(case, f"TICKFORGE_NODE_ID must come from the pod name (metadata.name), not {node_id}")
    if "TICKFORGE_PUBLIC_ADDR" not in by_name:
        failures.add(case, "a fleet pod needs TICKFORGE_PUBLIC_ADDR")
        return []
    if spec.get("updateStrategy", {}).get("type") != "RollingUpdate":
        failures.add(case, f"a fleet is updated one pod at a time (RollingUpdate), not {spec.get('updateStrategy')}")
    headless = [
        obj
        for _, obj in objects
        if obj.get("kind") == "Service" and obj["metadata"]["name"] == spec.get("serviceName")
    ]
    if len(headless) != 1 or headless[0]["spec"].get("clusterIP") != "None":
        failures.add(case, f"serviceName {spec.get('serviceName')} must name a rendered headless Service")
    elif not selects(headless[0]["spec"].get("selector", {}), pod_labels):
        failures.add(case, f"headless Service selector {headless[0]['spec'].get('selector')} misses the pods {pod_labels}")

    quic = [port for port in container.get("ports", []) if port.get("name") == "quic"]
    if len(quic) != 1 or quic[0].get("protocol") != "UDP":
        failures.add(case, f"expected one UDP port named quic, got {quic}")
        return []
    host_port = quic[0].get("hostPort")
    services = per_pod_services(objects)
    envs = []
    for ordinal in range(replicas):
        pod = f"{name}-{ordinal}"
        resolved = pod_env(case, env, pod, ordinal, namespace, failures)
        envs.append(resolved)
        address = resolved.get("TICKFORGE_PUBLIC_ADDR", "")
        matched = HOST_PORT.match(address)
        if resolved.get("TICKFORGE_NODE_ID") != pod:
            failures.add(case, f"pod {pod} gets node id {resolved.get('TICKFORGE_NODE_ID')!r}")
        if not matched:
            failures.add(case, f"pod {pod} advertises {address!r}, expected host:port with every $(VAR) expanded")
            continue
        if mode == "hostPort":
            if host_port is None or int(matched.group(1)) != host_port:
                failures.add(case, f"pod {pod} advertises {address} but its quic hostPort is {host_port}")
            host = address.rsplit(":", 1)[0]
            node_ip = DOWNWARD_API["status.hostIP"](pod, ordinal, namespace)
            node_name = DOWNWARD_API["spec.nodeName"](pod, ordinal, namespace)
            if host != node_ip and node_name not in host:
                failures.add(case, f"pod {pod} advertises host {host}, not its Kubernetes node's IP or name")
        else:
            mine = [svc for svc in services if svc["spec"]["selector"][POD_NAME_LABEL] == pod]
            if len(mine) != 1:
                failures.add(case, f"pod {pod} has {len(mine)} per-pod Services, expected 1")
                continue
            check_per_pod_service(case, mine[0], pod, address, pod_labels, quic[0], failures)
            if pod not in address:
                failures.add(case, f"pod {pod} advertises {address}, which does not name it")
    addresses = [resolved.get("TICKFORGE_PUBLIC_ADDR") for resolved in envs]
    if len(set(addresses)) != len(addresses):
        failures.add(case, f"fleet pods advertise the same address: {addresses}")
    if mode == "hostPort" and services:
        failures.add(case, f"hostPort mode has per-pod Services: {[svc['metadata']['name'] for svc in services]}")
    if mode == "perPodService":
        if host_port is not None:
            failures.add(case, f"perPodService mode binds hostPort {host_port}")
        if len(services) != replicas:
            failures.add(case, f"{len(services)} per-pod Services for {replicas} pods")
    return envs


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def check_per_pod_service(
    case: str, service: dict, pod: str, address: str, pod_labels: dict, quic: dict, failures: Failures
) -> None:
    """The Service of one fleet pod reaches that pod's QUIC port from outside."""
    spec = service["spec"]
    others = {key: value for key, value in spec["selector"].items() if key != POD_NAME_LABEL}
    if not selects(others, pod_labels):
        failures.add(case, f"Service {service['metadata']['name']} selector {others} misses the pod labels {pod_labels}")
    if spec.get("type") not in ("LoadBalancer", "NodePort"):
        failures.add(case, f"Service {service['metadata']['name']} of type {spec.get('type')} is not reachable from outside")
    udp = [
        port
        for port in spec.get("ports", [])
        if port.get("protocol") == "UDP" and port.get("targetPort") in ("quic", quic["containerPort"])
    ]
    if len(udp) != 1:
        failures.add(case, f"Service {service['metadata']['name']} has no UDP port to the quic port of {pod}")
    elif spec.get("type") == "LoadBalancer" and int(address.rsplit(":", 1)[1]) != udp[0]["port"]:
        failures.add(case, f"pod {pod} advertises {address}, but its LoadBalancer serves port {udp[0]['port']}")


def check_config(case: str, text: str, env: dict[str, str], tickforge: str, failures: Failures) -> None:
    """Runs the real parser on the rendered file with one pod's environment."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "tickforge.toml"
        path.write_text(text)
        process_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
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
            return
        # A fleet pod's node id and address reach the configuration.
        for name in ("TICKFORGE_NODE_ID", "TICKFORGE_PUBLIC_ADDR"):
            if name in env and f'"{env[name]}"' not in result.stdout:
                failures.add(case, f"tickforge check-config does not show {name}={env[name]!r}:\n{result.stdout}")


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


# Values the chart must refuse to render, and a part of the message that
# says why. Merged over the defaults.
ON_REDIS = {"storage": {"backend": "redis"}, "redis": {"host": "redis.example.internal"}}
REFUSALS = [
    ("fleet on the memory store", {"fleet": {"enabled": True}}, "fleet.enabled needs storage.backend: redis"),
    ("replicas without a fleet", {**ON_REDIS, "replicas": 3}, "replicas: 3 needs fleet.enabled"),
    (
        "per-pod Services without an address",
        {**ON_REDIS, "fleet": {"enabled": True, "publicAddress": {"mode": "perPodService"}}},
        "perPodService.address must be the host:port",
    ),
    (
        "an address that names no pod",
        {
            **ON_REDIS,
            "fleet": {
                "enabled": True,
                "publicAddress": {"mode": "perPodService", "perPodService": {"address": "games.example.net:4433"}},
            },
        },
        "with {pod} for the pod name",
    ),
    (
        "a load balancer address on another port",
        {
            **ON_REDIS,
            "fleet": {
                "enabled": True,
                "publicAddress": {"mode": "perPodService", "perPodService": {"address": "{pod}.example.net:443"}},
            },
        },
        "must end with the per-pod Services' port :4433",
    ),
    (
        "a host port host that names no Kubernetes node",
        {**ON_REDIS, "fleet": {"enabled": True, "publicAddress": {"hostPort": {"host": "games.example.net"}}}},
        "must contain {hostIP} or {nodeName}",
    ),
    (
        "an unknown address mode",
        {**ON_REDIS, "fleet": {"enabled": True, "publicAddress": {"mode": "hostNetwork"}}},
        "fleet.publicAddress.mode must be hostPort or perPodService",
    ),
    ("a lease out of range", {**ON_REDIS, "fleet": {"enabled": True, "leaseTtlMs": 100}}, "fleet.leaseTtlMs must be"),
    ("no room for a match", {**ON_REDIS, "fleet": {"enabled": True, "maxMatches": 0}}, "fleet.maxMatches must be at least 1"),
    ("[fleet] through config", {"config": {"fleet": {"node_id": "a"}}}, "config.fleet: the chart writes [fleet] itself"),
]


def check_refusals(chart: helm.Chart, failures: Failures) -> None:
    for name, values, expected in REFUSALS:
        try:
            render(chart, values, "tickforge")
        except helm.HelmError as error:
            if expected not in str(error):
                failures.add(f"refusal {name}", f"refused, but the message lacks {expected!r}: {error}")
            else:
                print(f"refused {name}: {str(error).split('): ', 1)[-1]}")
            continue
        failures.add(f"refusal {name}", f"rendered; expected a failure saying {expected!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chart", type=Path)
    parser.add_argument("--values", action="append", default=[], metavar="NAME=FILE[@NAMESPACE]")
    parser.add_argument(
        "--fleet",
        action="append",
        default=[],
        metavar="NAME=MODE",
        help="rendering NAME is a fleet with fleet.publicAddress.mode MODE (hostPort or perPodService); "
        "the others must be single nodes",
    )
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
    fleets = dict(spec.partition("=")[::2] for spec in args.fleet)
    unknown = set(fleets) - {case for case, _, _ in cases}
    if unknown or not set(fleets.values()) <= {"hostPort", "perPodService"}:
        parser.error(f"--fleet names renderings {sorted(unknown)} or modes {sorted(set(fleets.values()))} it does not know")

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
            check_tickforge(case, objects, namespace, fleets.get(case), args.tickforge, failures)
            check_redis(case, objects, args.redis_server, failures)
            kinds = ", ".join(sorted(name_of(obj) for _, obj in objects))
            shape = f"a fleet ({fleets[case]})" if case in fleets else "a single node"
            print(f"{case}: {shape}, rendered in namespace {namespace}: {kinds}")
        check_refusals(chart, failures)
    finally:
        chart.close()

    if failures.lines:
        print(f"\nchart check FAILED ({len(failures.lines)}):", file=sys.stderr)
        for line in failures.lines:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"chart check passed: {len(cases)} renderings, every manifest valid; {len(REFUSALS)} bad value sets refused")
    return 0


if __name__ == "__main__":
    sys.exit(main())
