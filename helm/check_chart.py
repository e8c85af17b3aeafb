#!/usr/bin/env python3
"""Checks the Helm chart the way a cluster would, without a cluster.

Lints it (strict), renders it with the default values and several value sets using Helm's own
Go library (helm-python-sdk), validates every manifest against the Kubernetes JSON schemas
(kubernetes-validate, strict: unknown fields are errors), and asserts on the rendered output:
probes, drain timing, the contract's environment variables, Secrets referenced not inlined,
memory sized for the connection limit, a NetworkPolicy that lets NATS (in another namespace),
DNS, the OTLP collector, Prometheus and `helm test` through, and a schema that rejects wrong
values. Also checks that nats/helm-values.yaml and nats/cluster/*.conf size JetStream alike.

Run by `make test` (`make chart-check`). Exits non-zero with a list of failures.
"""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "sse-relay"
KUBE_VERSION = "1.37.0"
NAMESPACE = "deploy"
RELEASE = "relay"

# Every RELAY_* variable of docs/api.md (configuration), including the additions beyond the
# first contract: RELAY_WRITE_TIMEOUT, RELAY_STREAM_MAX_CONSUMERS, the shared mode's
# RELAY_RING_EVENTS, RELAY_RING_BYTES, RELAY_CLIENT_BACKLOG, and self-healing's three.
CONTRACT_VARS = {
    "RELAY_LISTEN", "RELAY_NATS_URL", "RELAY_NATS_CREDS", "RELAY_NATS_TOKEN", "RELAY_NATS_CA",
    "RELAY_STREAM", "RELAY_STREAM_MANAGE", "RELAY_STREAM_REPLICAS", "RELAY_STREAM_MAX_AGE",
    "RELAY_STREAM_MAX_MSGS_PER_SUBJECT", "RELAY_MAX_CONNECTIONS", "RELAY_MAX_CONNECTIONS_PER_KEY",
    "RELAY_HEARTBEAT", "RELAY_RETRY", "RELAY_DRAIN_TIMEOUT", "RELAY_AUTH", "RELAY_JWT_SECRET",
    "RELAY_JWT_PUBLIC_KEY_FILE", "RELAY_JWT_AUDIENCE", "RELAY_CORS_ORIGINS", "RELAY_LOG",
    "RELAY_LOG_FORMAT", "RELAY_WRITE_TIMEOUT", "RELAY_STREAM_MAX_CONSUMERS", "RELAY_FANOUT",
    "RELAY_RING_EVENTS", "RELAY_RING_BYTES", "RELAY_CLIENT_BACKLOG", "RELAY_ADMIN_LISTEN",
    "RELAY_CLIENT_ADDRESS_HEADER", "RELAY_MAX_PENDING_CONNECTIONS", "RELAY_HEADER_READ_TIMEOUT",
    "RELAY_TIMELINE_RATE", "RELAY_TIMELINE_BURST", "RELAY_SHED_UNREACHABLE_AFTER", "RELAY_SHED_LAG",
    "RELAY_MAX_CONNECTION_AGE", "RELAY_PRESENCE", "RELAY_PRESENCE_INTERVAL",
}


class StrictLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate mapping keys, as Kustomize and other strict parsers
    do (PyYAML would silently keep the last one)."""

    def construct_mapping(self, node, deep=False):  # noqa: ANN001, ANN201
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

VALUE_SETS: dict[str, dict] = {
    "defaults": {},
    "other-nats": {
        "nats": {
            "url": "nats://nats-a.messaging:4222,nats://nats-b.messaging:4222",
            "credentialsSecret": {"name": "relay-nats-creds", "key": "relay.creds"},
            "tokenSecret": {"name": "relay-nats-token", "key": "token"},
            "caSecret": {"name": "nats-ca", "key": "ca.crt"},
        },
        "relay": {"streamReplicas": 1, "drainTimeoutSeconds": 45, "corsOrigins": ["https://a.example", "https://b.example"],
                  "fanout": "consumer", "ringBytes": 67108864},
    },
    "auth-existing-secret": {
        "auth": {"mode": "jwt", "existingSecret": "relay-jwt", "secretKey": "hs256", "audience": "sse-relay"},
        "otel": {"endpoint": "http://otel-collector.observability:4318", "samplerArg": "0.1", "sampler": "parentbased_traceidratio"},
    },
    # What a customer's production install looks like: NATS in its own namespace behind TLS, a
    # Gateway instead of an Ingress, OTLP over https, a locked-down network, custom domain.
    "production": {
        "replicaCount": 3,
        "clusterDomain": "corp.internal",
        "nats": {"url": "nats://nats.messaging.svc.corp.internal:4222", "caSecret": {"name": "nats-ca"}},
        "relay": {"maxConnections": 20000, "envFrom": [{"secretRef": {"name": "relay-extra-env"}}]},
        "resources": {"requests": {"cpu": "1", "memory": "768Mi"}, "limits": {"memory": "1Gi"}},
        "otel": {"endpoint": "https://otel-collector.observability.svc:4318", "resourceAttributes": "deployment.environment=prod"},
        "podAnnotations": {"example.com/team": "deploy"},
        "extraVolumes": [{"name": "corp-ca", "configMap": {"name": "corp-ca-bundle"}}],
        "extraVolumeMounts": [{"name": "corp-ca", "mountPath": "/etc/ssl/corp", "readOnly": True}],
        "httpRoute": {"enabled": True, "hostnames": ["relay.corp.example"]},
        "networkPolicy": {
            "enabled": True,
            "ingressFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway-system"}}}],
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
            "natsNamespaceSelector": {"kubernetes.io/metadata.name": "messaging"},
            "otelTo": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}],
        },
        "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 30, "targetConnectionsPerPod": 8000},
    },
    "single-replica": {"replicaCount": 1},
    # The one-node development install (README, "Install in a cluster").
    "dev": yaml.safe_load((ROOT / "helm" / "sse-relay" / "values-dev.yaml").read_text()),
    # Every knob a chart user reaches for, at once; ten replicas rolled 25 % at a time.
    "knobs": {
        "replicaCount": 10,
        "global": {"imageRegistry": "registry.corp.example/mirror"},
        "image": {"digest": "sha256:" + "a" * 64},
        "rollingUpdate": {"maxSurge": "25%"},
        "priorityClassName": "streaming-high",
        "probes": {"readiness": {"periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 3}},
        "initContainers": [{"name": "wait-for-nats", "image": "registry.corp.example/busybox:1.37",
                            "command": ["sh", "-c", "until nc -z nats 4222; do sleep 1; done"]}],
        "extraContainers": [{"name": "log-shipper", "image": "registry.corp.example/fluent-bit:3.2",
                             "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}}}],
        "service": {"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv6", "IPv4"]},
        "serviceMonitor": {"enabled": True, "namespace": "monitoring",
                           "relabelings": [{"targetLabel": "cluster", "replacement": "eu-1"}],
                           "metricRelabelings": [{"sourceLabels": ["__name__"], "regex": "relay_http_.*",
                                                  "action": "drop"}]},
    },
    "ingress-hpa-monitor": {
        "ingress": {"enabled": True, "tls": [{"hosts": ["relay.example.com"], "secretName": "relay-tls"}]},
        "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"},
                           "runbookUrl": "https://wiki.corp.example/sse-relay/operations"},
        "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Platform"}},
        "networkPolicy": {"enabled": True, "ingressFrom": [{"namespaceSelector": {"matchLabels": {"name": "ingress-nginx"}}}]},
        "auth": {"mode": "jwt", "keyType": "publicKey", "publicKey": "-----BEGIN PUBLIC KEY-----\nMFkw...\n-----END PUBLIC KEY-----\n"},
    },
}

failures: list[str] = []


def check(condition: bool, message: str) -> None:
    if not condition:
        failures.append(message)


def render(chart: helm.Chart, values: dict) -> dict[str, list[dict]]:
    """Template path -> the manifests it rendered (empty templates dropped)."""
    out: dict[str, list[dict]] = {}
    for path, text in chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True).items():
        if path.endswith("NOTES.txt"):
            out[path] = [{"notes": text}]
            continue
        try:
            docs = [d for d in yaml.load_all(text, Loader=StrictLoader) if d]
        except yaml.YAMLError as err:
            failures.append(f"{path}: not strict YAML: {err}")
            continue
        if docs:
            out[path] = docs
    return out


def manifests(rendered: dict[str, list[dict]]) -> list[dict]:
    return [d for path, docs in rendered.items() if not path.endswith("NOTES.txt") for d in docs]


def find(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def mebibytes(quantity: str) -> float:
    """A Kubernetes memory quantity (e.g. 768Mi, 1Gi, 800M) in MiB."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|K|M|G)?", str(quantity))
    assert match, quantity
    unit = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "K": 1e3 / 2**20, "M": 1e6 / 2**20, "G": 1e9 / 2**20,
            None: 1 / 2**20}[match.group(2)]
    return float(match.group(1)) * unit


def memory_needed_mib(env: dict[str, dict]) -> float:
    """The README's sizing rule: 64 MiB + the ring (shared mode) + RELAY_MAX_CONNECTIONS x 24 KiB
    (shared) or 48 KiB (consumer), from the benchmark's 16 and 44 KiB per connection under load."""
    connections = int(env["RELAY_MAX_CONNECTIONS"]["value"])
    if env["RELAY_FANOUT"]["value"] == "shared":
        return 64 + int(env["RELAY_RING_BYTES"]["value"]) / 2**20 + connections * 24 / 1024
    return 64 + connections * 48 / 1024


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return int(match.group(1))


RUNBOOK = ROOT / "docs" / "operations.md"
ALERTS_FILE = ROOT / "helm" / "sse-relay" / "files" / "alerts.yaml"


def runbook_anchors() -> set[str]:
    """GitHub's anchors of the runbook's headings (lower case, spaces to dashes, punctuation dropped)."""
    anchors = set()
    for line in RUNBOOK.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))
    return anchors


def check_alerts(name: str, doc: dict) -> None:
    """A PrometheusRule: the groups of files/alerts.yaml with the runbook links pointing at the
    configured runbook, every alert with a severity, a summary naming the pod and an entry in
    docs/operations.md."""
    groups = doc["spec"]["groups"]
    from_file = yaml.safe_load(ALERTS_FILE.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    check(len(rules) == sum(len(g["rules"]) for g in from_file) and len(rules) >= 10,
          f"{name}: PrometheusRule holds every alert of files/alerts.yaml")
    anchors = runbook_anchors()
    for rule in rules:
        alert = rule.get("alert", "?")
        check(rule.get("labels", {}).get("severity") in {"critical", "warning", "info"}, f"{name}: {alert} severity")
        check("{{ $labels.pod }}" in rule.get("annotations", {}).get("summary", ""), f"{name}: {alert} summary names the pod")
        url = rule.get("annotations", {}).get("runbook_url", "")
        anchor = url.partition("#")[2]
        check(anchor == alert.lower() and anchor in anchors,
              f"{name}: {alert} runbook_url {url} points at its entry in docs/operations.md")


def validate(name: str, docs: list[dict]) -> None:
    for doc in docs:
        kind = doc.get("kind")
        if kind == "PrometheusRule":
            check_alerts(name, doc)
            continue
        if doc.get("apiVersion", "").startswith("monitoring.coreos.com/"):
            # A CRD: no upstream schema; check the parts Prometheus Operator needs.
            check(doc["spec"]["endpoints"][0]["path"] == "/metrics", f"{name}: ServiceMonitor path")
            check(doc["spec"]["endpoints"][0]["port"] == "admin", f"{name}: ServiceMonitor scrapes the admin port")
            check(doc["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/component") == "admin",
                  f"{name}: ServiceMonitor selects the admin Service")
            continue
        if doc.get("apiVersion") == "gateway.networking.k8s.io/v1":
            # A CRD too: the fields an HTTPRoute needs, and only known ones.
            spec = doc["spec"]
            check(kind == "HTTPRoute" and set(spec) <= {"parentRefs", "hostnames", "rules"},
                  f"{name}: HTTPRoute fields {sorted(spec)}")
            check(all("name" in ref for ref in spec["parentRefs"]), f"{name}: HTTPRoute parentRefs")
            for rule in spec["rules"]:
                check(set(rule) <= {"matches", "backendRefs", "timeouts", "filters"}, f"{name}: HTTPRoute rule fields")
                check(all(re.fullmatch(r"([0-9]{1,5}(h|m|s|ms)){1,4}", t) for t in rule["timeouts"].values()),
                      f"{name}: HTTPRoute timeouts are Gateway API durations")
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except Exception as err:  # noqa: BLE001 — report every invalid manifest, then fail
            failures.append(f"{name}: {kind} {doc.get('metadata', {}).get('name')}: {err}")


def check_common(name: str, values: dict, rendered: dict[str, list[dict]], chart: helm.Chart) -> dict:
    docs = manifests(rendered)
    merged = chart.merge_values(values)
    [deployment] = find(docs, "Deployment")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "relay")
    env = env_of(container)

    check(container["readinessProbe"]["httpGet"]["path"] == "/readyz", f"{name}: readiness probe on /readyz")
    check(container["livenessProbe"]["httpGet"]["path"] == "/healthz", f"{name}: liveness probe on /healthz")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        check(container[probe]["httpGet"]["port"] == "admin", f"{name}: {probe} on the admin port")
    drain = seconds(env["RELAY_DRAIN_TIMEOUT"]["value"])
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    check(pre_stop > 0, f"{name}: a preStop sleep")
    check(pod["terminationGracePeriodSeconds"] > drain + pre_stop,
          f"{name}: grace {pod['terminationGracePeriodSeconds']} > drain {drain} + preStop {pre_stop}")
    check(spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, f"{name}: maxUnavailable 0")
    check(spec["minReadySeconds"] >= drain + pre_stop,
          f"{name}: minReadySeconds {spec['minReadySeconds']} covers drain {drain} + preStop {pre_stop}")
    check(pod["enableServiceLinks"] is False, f"{name}: no service-link variables")
    limit = mebibytes(container["resources"]["limits"]["memory"])
    check(limit >= memory_needed_mib(env),
          f"{name}: memory limit {limit:.0f} MiB below the sizing rule's {memory_needed_mib(env):.0f} MiB")
    check(mebibytes(container["resources"]["requests"]["memory"]) <= limit, f"{name}: memory request <= limit")
    check(merged["autoscaling"]["enabled"] or spec["replicas"] == merged["replicaCount"], f"{name}: replicas")
    check(pod["securityContext"]["runAsNonRoot"] is True, f"{name}: runAsNonRoot")
    check(container["securityContext"]["readOnlyRootFilesystem"] is True, f"{name}: read-only root")
    check(container["securityContext"]["allowPrivilegeEscalation"] is False, f"{name}: no privilege escalation")
    check(any(c["topologyKey"] == "kubernetes.io/hostname" for c in pod.get("topologySpreadConstraints", [])),
          f"{name}: spread across nodes")
    check("resources" in container and container["resources"].get("requests"), f"{name}: resources")
    relay_env = {k for k in env if k.startswith("RELAY_")}
    check(relay_env <= CONTRACT_VARS, f"{name}: unknown RELAY_ variables {sorted(relay_env - CONTRACT_VARS)}")
    host = merged["relay"]["listenHost"]
    check(env["RELAY_LISTEN"]["value"] == f"{host}:{merged['relay']['port']}", f"{name}: RELAY_LISTEN")
    check(env["RELAY_ADMIN_LISTEN"]["value"] == f"{host}:{merged['relay']['adminPort']}",
          f"{name}: RELAY_ADMIN_LISTEN")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    check(ports == {"http": merged["relay"]["port"], "admin": merged["relay"]["adminPort"]},
          f"{name}: container ports {ports}")
    # No secret value is ever inlined in the Deployment.
    for var in ("RELAY_JWT_SECRET", "RELAY_NATS_TOKEN", "OTEL_EXPORTER_OTLP_HEADERS"):
        if var in env:
            check("valueFrom" in env[var] and "value" not in env[var], f"{name}: {var} from a Secret")
    services = {d["metadata"]["name"]: d for d in find(docs, "Service")}
    service = services[f"{RELEASE}-sse-relay"] if f"{RELEASE}-sse-relay" in services else next(
        d for n, d in services.items() if not n.endswith("-admin"))
    admin = next((d for n, d in services.items() if n.endswith("-admin")), None)
    check(service["spec"]["selector"] == spec["selector"]["matchLabels"], f"{name}: Service selects the pods")
    check([p["targetPort"] for p in service["spec"]["ports"]] == ["http"],
          f"{name}: the public Service exposes only the API port")
    check(admin is not None and [p["targetPort"] for p in admin["spec"]["ports"]] == ["admin"]
          and admin["spec"]["type"] == "ClusterIP", f"{name}: a cluster-internal admin Service")
    for ingress in find(docs, "Ingress"):
        backends = [p["backend"]["service"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
        check(all(b["name"] == service["metadata"]["name"] for b in backends),
              f"{name}: the Ingress routes to the public Service only")
    test_pods = [d for d in find(docs, "Pod") if d["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    check(len(test_pods) == 1 and "/readyz" in " ".join(test_pods[0]["spec"]["containers"][0]["command"]),
          f"{name}: helm test pod checks /readyz")
    test_labels = test_pods[0]["metadata"]["labels"] if test_pods else {}
    # Neither the Deployment (its ReplicaSet would adopt the pod), the Service nor the relay's
    # NetworkPolicy may select the test pod.
    check(not selects(spec["selector"]["matchLabels"], test_labels), f"{name}: the Deployment selects the test pod")
    check(not selects(service["spec"]["selector"], test_labels), f"{name}: the Service selects the test pod")
    for policy in find(docs, "NetworkPolicy"):
        rules = policy["spec"]["ingress"]
        ingress_ports = {p["port"] for rule in rules for p in rule["ports"]}
        check(ingress_ports == {"http", "admin"}, f"{name}: NetworkPolicy admits the API and admin ports")
        check(not selects(policy["spec"]["podSelector"]["matchLabels"], test_labels),
              f"{name}: the relay's NetworkPolicy applies to the test pod")
        check(any(any(p["port"] == "http" for p in rule["ports"])
                  and any("namespaceSelector" not in peer and selects(peer["podSelector"]["matchLabels"], test_labels)
                          for peer in rule.get("from", []) if "podSelector" in peer)
                  for rule in rules), f"{name}: NetworkPolicy admits the helm test pod")
        egress = policy["spec"]["egress"]
        dns = [r for r in egress if {p["port"] for p in r["ports"]} == {53}]
        check(len(dns) == 1 and any(peer.get("ipBlock", {}).get("cidr") == "169.254.20.10/32" for peer in dns[0]["to"])
              and any("podSelector" in peer for peer in dns[0]["to"]), f"{name}: DNS egress to kube-dns and NodeLocal DNSCache")
        nats_port = merged["networkPolicy"]["natsPort"]
        nats = [r for r in egress if [p["port"] for p in r["ports"]] == [nats_port]]
        check(len(nats) == 1, f"{name}: NATS egress on {nats_port}")
        if merged["networkPolicy"]["natsNamespaceSelector"] and nats:
            check(nats[0]["to"][0]["namespaceSelector"]["matchLabels"] == merged["networkPolicy"]["natsNamespaceSelector"],
                  f"{name}: NATS egress reaches NATS's namespace")
        if "OTEL_EXPORTER_OTLP_ENDPOINT" in env:
            port = int(re.search(r":(\d+)", env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"].split("//", 1)[1]).group(1))
            check(any([p["port"] for p in r["ports"]] == [port] for r in egress), f"{name}: egress to the OTLP collector on {port}")
    pdbs = find(docs, "PodDisruptionBudget")
    replicas = merged["autoscaling"]["minReplicas"] if merged["autoscaling"]["enabled"] else merged["replicaCount"]
    if replicas > 1:
        check(len(pdbs) == 1 and pdbs[0]["spec"].get("maxUnavailable") == 1
              and pdbs[0]["spec"].get("unhealthyPodEvictionPolicy") == "AlwaysAllow",
              f"{name}: PodDisruptionBudget maxUnavailable 1, unhealthy pods always evictable")
    else:
        check(pdbs == [], f"{name}: no PodDisruptionBudget over a single replica (it would block node drains)")
    # No cluster domain is assumed.
    if not merged["clusterDomain"]:
        check("cluster.local" not in yaml.safe_dump_all(docs), f"{name}: a hard-coded cluster.local")
    notes = next(d["notes"] for p, ds in rendered.items() if p.endswith("NOTES.txt") for d in ds)
    check("curl -N" in notes, f"{name}: NOTES has a curl -N line")
    return {"env": env, "docs": docs, "pod": pod, "container": container}


def deployment_annotations(docs: list[dict]) -> dict:
    [deployment] = find(docs, "Deployment")
    return deployment["spec"]["template"]["metadata"].get("annotations") or {}


def check_nats_dev() -> None:
    """nats/helm-values-dev.yaml: one JetStream server that fits a one-node cluster, with the
    production API queue."""
    dev = yaml.load((ROOT / "nats" / "helm-values-dev.yaml").read_text(), Loader=StrictLoader)
    prod = yaml.load((ROOT / "nats" / "helm-values.yaml").read_text(), Loader=StrictLoader)
    jetstream = dev["config"]["jetstream"]
    check(dev["config"]["cluster"]["enabled"] is False and dev["podDisruptionBudget"]["enabled"] is False,
          "nats/helm-values-dev.yaml: a single server")
    check(jetstream["merge"]["request_queue_limit"] == prod["config"]["jetstream"]["merge"]["request_queue_limit"],
          "nats/helm-values-dev.yaml: the production API queue")
    check(mebibytes(jetstream["fileStore"]["pvc"]["size"]) > mebibytes(jetstream["fileStore"]["maxSize"])
          and mebibytes(jetstream["fileStore"]["pvc"]["size"]) <= 1024,
          "nats/helm-values-dev.yaml: a volume of at most 1 Gi, larger than the file store limit")
    limit = mebibytes(dev["container"]["merge"]["resources"]["limits"]["memory"])
    gomemlimit = mebibytes(dev["container"]["env"]["GOMEMLIMIT"].replace("MiB", "Mi").replace("GiB", "Gi"))
    check(mebibytes(jetstream["memoryStore"]["maxSize"]) < gomemlimit < limit,
          "nats/helm-values-dev.yaml: memory store < GOMEMLIMIT < memory limit")


def check_nats_sizing() -> None:
    """nats/helm-values.yaml (the official chart) and nats/cluster/*.conf (tests, benchmark) give
    JetStream the same limits, so what is measured is what is installed."""
    values = yaml.load((ROOT / "nats" / "helm-values.yaml").read_text(), Loader=StrictLoader)
    jetstream = values["config"]["jetstream"]
    for conf in sorted((ROOT / "nats" / "cluster").glob("node-*.conf")):
        text = conf.read_text()
        def setting(key: str) -> str:
            match = re.search(rf"^\s*{key}:\s*(\S+)", text, re.M)
            return match.group(1) if match else ""
        check(setting("request_queue_limit") == str(jetstream["merge"]["request_queue_limit"]),
              f"{conf.name}: request_queue_limit differs from nats/helm-values.yaml")
        check(mebibytes(setting("max_memory_store").replace("MB", "Mi").replace("GB", "Gi"))
              == mebibytes(jetstream["memoryStore"]["maxSize"]), f"{conf.name}: max_memory_store differs")
        check(mebibytes(setting("max_file_store").replace("MB", "Mi").replace("GB", "Gi"))
              == mebibytes(jetstream["fileStore"]["maxSize"]), f"{conf.name}: max_file_store differs")
    check(mebibytes(jetstream["fileStore"]["pvc"]["size"]) > mebibytes(jetstream["fileStore"]["maxSize"]),
          "nats/helm-values.yaml: the volume is larger than the file store limit")
    limit = mebibytes(values["container"]["merge"]["resources"]["limits"]["memory"])
    gomemlimit = mebibytes(values["container"]["env"]["GOMEMLIMIT"].replace("MiB", "Mi").replace("GiB", "Gi"))
    check(mebibytes(jetstream["memoryStore"]["maxSize"]) < gomemlimit < limit,
          "nats/helm-values.yaml: memory store < GOMEMLIMIT < memory limit")


def main() -> int:
    chart = helm.Chart.load(CHART)
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    check(chart.metadata["appVersion"] == cargo["package"]["version"],
          f"appVersion {chart.metadata['appVersion']} != Cargo.toml {cargo['package']['version']}")
    check(chart.metadata["apiVersion"] == "v2", "Chart apiVersion v2")

    report = helm.lint(CHART, strict=True, kube_version=f"v{KUBE_VERSION}")
    for message in report.get("messages", []):
        if message.get("severity", 0) >= 2:
            failures.append(f"lint: {message}")
    failures.extend(f"lint: {e}" for e in report.get("errors", []) or [])

    check_nats_sizing()
    check_nats_dev()
    for name, values in VALUE_SETS.items():
        chart.validate_schema(values)
        rendered = render(chart, values)
        validate(name, manifests(rendered))
        got = check_common(name, values, rendered, chart)
        env, docs, pod = got["env"], got["docs"], got["pod"]
        if name == "defaults":
            check(env["RELAY_NATS_URL"]["value"] == f"nats://nats.{NAMESPACE}.svc:4222",
                  "defaults: NATS URL is the official chart's release `nats`")
            check(env["RELAY_STREAM_REPLICAS"]["value"] == "3", "defaults: RELAY_STREAM_REPLICAS 3")
            check(env["RELAY_AUTH"]["value"] == "none", "defaults: auth off")
            check(find(docs, "Ingress") == [] and find(docs, "HorizontalPodAutoscaler") == [], "defaults: no ingress/HPA")
            check("OTEL_EXPORTER_OTLP_ENDPOINT" not in env, "defaults: no OTel endpoint")
            check(pod["terminationGracePeriodSeconds"] == 35, "defaults: grace 20 + 5 + 10")
            [deployment] = find(docs, "Deployment")
            check(deployment["spec"]["replicas"] == 2 and deployment["spec"]["minReadySeconds"] == 25,
                  "defaults: 2 replicas, each ready 25 s (preStop + drain) before the next is replaced")
            check(env["RELAY_FANOUT"]["value"] == "shared", "defaults: the chart installs the shared fan-out")
            check((env["RELAY_SHED_UNREACHABLE_AFTER"]["value"], env["RELAY_SHED_LAG"]["value"],
                   env["RELAY_MAX_CONNECTION_AGE"]["value"]) == ("15s", "5s", "30m"),
                  "defaults: self-healing on, streams renewed every 30 minutes")
            check((env["RELAY_PRESENCE"]["value"], env["RELAY_PRESENCE_INTERVAL"]["value"]) == ("true", "5s"),
                  "defaults: presence on, every 5 s")
        if name == "other-nats":
            check(env["RELAY_NATS_URL"]["value"] == values["nats"]["url"], "other-nats: RELAY_NATS_URL")
            check(env["RELAY_NATS_CREDS"]["value"] == "/etc/sse-relay/nats/creds", "other-nats: creds file")
            check(env["RELAY_NATS_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "relay-nats-token", "key": "token"},
                  "other-nats: token from its Secret")
            check(env["RELAY_CORS_ORIGINS"]["value"] == "https://a.example,https://b.example", "other-nats: CORS list")
            check(env["RELAY_FANOUT"]["value"] == "consumer", "other-nats: consumer fan-out")
            check(env["RELAY_RING_BYTES"]["value"] == "67108864", "other-nats: ring bytes as a plain integer")
            check(pod["terminationGracePeriodSeconds"] > 45 + 5, "other-nats: grace follows the drain timeout")
            volumes = {v["name"]: v for v in pod["volumes"]}
            check(volumes["nats-creds"]["secret"]["secretName"] == "relay-nats-creds", "other-nats: creds volume")
        if name == "auth-existing-secret":
            check(find(docs, "Secret") == [], "auth-existing-secret: no Secret rendered (the existing one is used)")
            check(env["RELAY_JWT_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "relay-jwt", "key": "hs256"},
                  "auth-existing-secret: RELAY_JWT_SECRET references the existing Secret")
            check(env["RELAY_JWT_AUDIENCE"]["value"] == "sse-relay", "auth-existing-secret: audience")
            check(env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == values["otel"]["endpoint"], "OTel endpoint")
            check(env["OTEL_TRACES_SAMPLER_ARG"]["value"] == "0.1", "OTel sampler arg")
        if name == "production":
            check(env["RELAY_NATS_URL"]["value"] == values["nats"]["url"], "production: RELAY_NATS_URL")
            attributes = env["OTEL_RESOURCE_ATTRIBUTES"]["value"].split(",")
            check(attributes[:3] == ["service.instance.id=$(K8S_POD_NAME)", "k8s.pod.name=$(K8S_POD_NAME)",
                                     "k8s.namespace.name=$(K8S_NAMESPACE_NAME)"]
                  and attributes[3:] == ["deployment.environment=prod"], f"production: resource attributes {attributes}")
            names = list(env)
            check(env["K8S_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
                  and names.index("K8S_POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES"),
                  "production: the pod name from the downward API, defined before it is referenced")
            check(got["container"]["envFrom"] == values["relay"]["envFrom"], "production: envFrom")
            check({"name": "corp-ca", "configMap": {"name": "corp-ca-bundle"}} in pod["volumes"]
                  and values["extraVolumeMounts"][0] in got["container"]["volumeMounts"]
                  and any(v["name"] == "nats-ca" for v in pod["volumes"]), "production: extra volumes beside the chart's")
            check(deployment_annotations(docs).get("example.com/team") == "deploy", "production: pod annotations")
            [route] = find(docs, "HTTPRoute")
            [rule] = route["spec"]["rules"]
            check(route["spec"]["hostnames"] == ["relay.corp.example"]
                  and rule["backendRefs"] == [{"name": f"{RELEASE}-sse-relay", "port": 80}]
                  and rule["timeouts"] == {"request": "0s", "backendRequest": "0s"},
                  "production: HTTPRoute to the public Service with SSE timeouts off")
            check(find(docs, "Ingress") == [], "production: no Ingress beside the HTTPRoute")
            [hpa] = find(docs, "HorizontalPodAutoscaler")
            pods_metrics = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
            check(pods_metrics == [{"metric": {"name": "relay_connections"},
                                    "target": {"type": "AverageValue", "averageValue": "8000"}}],
                  f"production: HPA on connections per pod {pods_metrics}")
        if name == "dev":
            [deployment] = find(docs, "Deployment")
            check(deployment["spec"]["replicas"] == 1 and env["RELAY_STREAM_REPLICAS"]["value"] == "1"
                  and find(docs, "PodDisruptionBudget") == [],
                  "dev: one replica, an R1 stream, no PDB to block the one node's drain")
        if name == "knobs":
            [deployment] = find(docs, "Deployment")
            check(got["container"]["image"] == "registry.corp.example/mirror/sse-relay/sse-relay@sha256:" + "a" * 64,
                  f"knobs: the image by digest from the global registry ({got['container']['image']})")
            [test_pod] = [d for d in docs if d["kind"] == "Pod"]
            check(test_pod["spec"]["containers"][0]["image"] == "registry.corp.example/mirror/library/busybox:1.37",
                  "knobs: the helm-test image from the global registry")
            check(pod.get("priorityClassName") == "streaming-high", "knobs: priorityClassName")
            check([c["name"] for c in pod["containers"]] == ["relay", "log-shipper"]
                  and [c["name"] for c in pod["initContainers"]] == ["wait-for-nats"], "knobs: extra and init containers")
            readiness = got["container"]["readinessProbe"]
            check(readiness["httpGet"]["path"] == "/readyz" and readiness["periodSeconds"] == 5
                  and readiness["timeoutSeconds"] == 3, "knobs: readiness probe timings")
            service = next(d for d in find(docs, "Service") if d["metadata"]["name"] == f"{RELEASE}-sse-relay")
            check(service["spec"].get("ipFamilyPolicy") == "PreferDualStack"
                  and service["spec"].get("ipFamilies") == ["IPv6", "IPv4"], "knobs: dual-stack Service")
            [monitor] = find(docs, "ServiceMonitor")
            check(monitor["metadata"].get("namespace") == "monitoring"
                  and monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
                  and monitor["spec"]["endpoints"][0]["relabelings"][0]["targetLabel"] == "cluster"
                  and monitor["spec"]["endpoints"][0]["metricRelabelings"][0]["action"] == "drop",
                  "knobs: ServiceMonitor in the monitoring namespace, finding the Service, relabelled")
            # Ten replicas within Helm's default --wait (5 minutes): steps of maxSurge pods, each
            # ready for minReadySeconds after a start-up of at most the startup probe's budget.
            surge = deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
            per_step = -(-10 * int(surge.rstrip("%")) // 100) if isinstance(surge, str) else surge
            step_seconds = deployment["spec"]["minReadySeconds"] + 15
            rollout = -(-10 // per_step) * step_seconds
            check(rollout < 300, f"knobs: a rollout of 10 replicas ~{rollout} s, within Helm's --wait")
        if name == "single-replica":
            check(pod.get("enableServiceLinks") is False, "single-replica: rendered")
        if name == "ingress-hpa-monitor":
            [ingress] = find(docs, "Ingress")
            annotations = ingress["metadata"]["annotations"]
            check(annotations.get("nginx.ingress.kubernetes.io/proxy-buffering") == "off", "ingress: buffering off")
            check(int(annotations.get("nginx.ingress.kubernetes.io/proxy-read-timeout", "0")) >= 3600,
                  "ingress: long read timeout")
            [hpa] = find(docs, "HorizontalPodAutoscaler")
            check(hpa["spec"]["minReplicas"] == 3 and "replicas" not in pod, "hpa: owns the replica count")
            check(len(find(docs, "ServiceMonitor")) == 1, "ServiceMonitor rendered")
            [rule] = find(docs, "PrometheusRule")
            check(rule["metadata"]["labels"].get("release") == "prometheus", "PrometheusRule labels for the ruleSelector")
            urls = {r["annotations"]["runbook_url"].partition("#")[0]
                    for g in rule["spec"]["groups"] for r in g["rules"]}
            check(urls == {"https://wiki.corp.example/sse-relay/operations"}, f"PrometheusRule runbook links {urls}")
            dashboards = [cm for cm in find(docs, "ConfigMap") if "sse-relay.json" in cm.get("data", {})]
            check(len(dashboards) == 1 and dashboards[0]["metadata"]["labels"].get("grafana_dashboard") == "1"
                  and dashboards[0]["metadata"].get("annotations") == {"grafana_folder": "Platform"},
                  "grafanaDashboard: a ConfigMap the sidecar loads")
            dashboard = json.loads(dashboards[0]["data"]["sse-relay.json"])
            check(dashboard == json.loads((ROOT / "helm/sse-relay/files/dashboard.json").read_text())
                  and len(dashboard["panels"]) >= 8, "grafanaDashboard: files/dashboard.json, whole")
            check(len(find(docs, "NetworkPolicy")) == 1, "NetworkPolicy rendered")
            [secret] = find(docs, "Secret")
            check("jwt-public-key.pem" in secret["data"], "public key stored in the chart's Secret")
            check(got["env"]["RELAY_JWT_PUBLIC_KEY_FILE"]["value"] == "/etc/sse-relay/jwt/public.pem",
                  "public key mounted as a file")

    # Every contract variable is reachable from some value set.
    reachable = set()
    for values in VALUE_SETS.values():
        [deployment] = find(manifests(render(chart, values)), "Deployment")
        reachable |= set(env_of(deployment["spec"]["template"]["spec"]["containers"][0]))
    check(CONTRACT_VARS - {"RELAY_JWT_PUBLIC_KEY_FILE"} <= reachable | {"RELAY_JWT_PUBLIC_KEY_FILE"},
          f"unreachable variables: {sorted(CONTRACT_VARS - reachable)}")
    check(CONTRACT_VARS <= reachable, f"unreachable variables: {sorted(CONTRACT_VARS - reachable)}")

    # The schema refuses wrong types and unknown keys.
    for bad in ({"replicaCount": "two"}, {"relay": {"maxConnections": "lots"}}, {"auth": {"mode": "maybe"}},
                {"replicas": 3}, {"relay": {"heartbeats": "5s"}}, {"service": {"port": 70000}}):
        try:
            chart.validate_schema(bad)
        except helm.HelmValuesError:
            continue
        failures.append(f"schema accepted {bad}")
    # A jwt install without any key fails to render with a clear message.
    try:
        chart.render({"auth": {"mode": "jwt"}}, name=RELEASE, namespace=NAMESPACE)
        failures.append("jwt without a key rendered")
    except helm.HelmError as err:
        check("auth.secret" in str(err), f"jwt without a key: unclear error {err}")

    if failures:
        print(f"chart check: {len(failures)} failure(s)")
        for failure in failures:
            print(f"  - {failure}")
        return 1
    print(f"chart check: lint clean, {len(VALUE_SETS)} value sets rendered and valid against Kubernetes {KUBE_VERSION}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
