#!/usr/bin/env python3
"""Checks of Tether's deployment files, with no helm binary, no cluster and
no Docker engine: the Helm chart (deploy/helm/tether), the compose stack
(deploy/compose) and the Dockerfile (deploy/docker).

    check.py CHECK [--bin-dir DIR]

One CHECK per run (the Rust tests in integration-tests/tests/e2e/deploy.rs
call each as its own test, so a failure names what broke). Exit 0 when it
holds; otherwise 1 with every problem found on stderr. `--bin-dir` is a
directory with the service binaries under their names
(`tether-policy-decision`, ...): the configuration checks run each one with
`--validate-only` on the configuration the chart or compose file gives it.

The chart is rendered with helm-python-sdk (the Helm v4 SDK in a wheel),
objects are validated with kubernetes-validate's bundled schemas (strict:
no unknown field), cert-manager Certificates against schemas/certificate.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy/helm/tether"
HA_VALUES = CHART / "ci/ha-values.yaml"
COMPOSE = ROOT / "deploy/compose/compose.yaml"
DOCKERFILE = ROOT / "deploy/docker/Dockerfile"
CERT_SCHEMA = Path(__file__).resolve().parent / "schemas/certificate.json"
EXAMPLE_PACK = ROOT / "examples/hr"

RELEASE = "tether"
NAMESPACE = "tether"
KUBE_VERSION = "1.37.0"

SERVICES = {
    # values key → (service name, binary)
    "identityExchange": ("identity-exchange", "tether-identity-exchange"),
    "policyDecision": ("policy-decision", "tether-policy-decision"),
    "credentialIssuer": ("credential-issuer", "tether-credential-issuer"),
    "cibaOrchestrator": ("ciba-orchestrator", "tether-ciba-orchestrator"),
    "agentFacade": ("agent-facade", "tether-agent-facade"),
}
STATEFUL = {"identityExchange", "credentialIssuer", "cibaOrchestrator", "agentFacade"}
BINARY_OF = {name: binary for name, binary in SERVICES.values()}

# Who may call which service's gRPC port, and whom each service calls
# (docs/design/004-internal-trust.md).
CALLERS = {
    "agent-facade": set(),
    "identity-exchange": {"agent-facade", "credential-issuer", "ciba-orchestrator"},
    "policy-decision": {"agent-facade"},
    "credential-issuer": {"agent-facade"},
    "ciba-orchestrator": {"agent-facade"},
}
EXTERNAL_EGRESS = {
    "agent-facade": set(),
    "identity-exchange": {"idp"},
    "policy-decision": set(),
    "credential-issuer": {"vault"},
    "ciba-orchestrator": {"idp"},
}

# Placeholder for a value a Secret supplies at run time (never rendered).
SECRET_PLACEHOLDER_URL = "postgres://tether:from-the-secret@postgres.invalid:5432/tether"


class Problems:
    """Collects every problem of one check instead of stopping at the first."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")

    def expect(self, ok: bool, where: str, what: str) -> None:
        if not ok:
            self.add(where, what)


# --------------------------------------------------------------------------
# Rendering


def helm():
    import helm_python

    return helm_python


def load_chart():
    return helm().Chart.load(str(CHART))


def example_pack_files() -> dict[str, str]:
    return {
        p.name: p.read_text()
        for p in sorted(EXAMPLE_PACK.iterdir())
        if p.suffix in (".cedar", ".cedarschema") or p.name == "entities.json"
    }


def profiles() -> dict[str, dict[str, Any] | None]:
    """The two profiles every chart check covers: the chart's defaults, and
    the HA profile with the example policy pack."""
    ha = yaml.safe_load(HA_VALUES.read_text())
    ha["policies"] = {"files": example_pack_files()}
    return {"default": None, "ha": ha}


def render(values: dict[str, Any] | None, chart=None) -> list[dict[str, Any]]:
    chart = chart or load_chart()
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in sorted(out.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("__source__", path)
                objects.append(doc)
    return objects


def rendered_text(values: dict[str, Any] | None, chart=None) -> str:
    chart = chart or load_chart()
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return "\n".join(text for _, text in sorted(out.items()))


def strip(obj: dict[str, Any]) -> dict[str, Any]:
    obj = dict(obj)
    obj.pop("__source__", None)
    return obj


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]


def by_name(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in of_kind(objects, kind)}


def name_of(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def component(obj: dict[str, Any]) -> str:
    return obj["metadata"]["labels"]["app.kubernetes.io/component"]


def merged_values(values: dict[str, Any] | None, chart=None) -> dict[str, Any]:
    chart = chart or load_chart()
    return chart.merge_values(values)


def expect_refused(chart, values: dict[str, Any]) -> str | None:
    """The error text when the chart refuses `values`; None when it renders."""
    try:
        chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    except Exception as e:  # the SDK raises HelmValuesError / HelmRenderError
        return str(e)
    return None


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def nested(path: str, value: Any) -> dict[str, Any]:
    """`a.b.c`, v → {"a": {"b": {"c": v}}}."""
    out: Any = value
    for key in reversed(path.split(".")):
        out = {key: out}
    return out


# --------------------------------------------------------------------------
# Chart checks


def check_chart_render(p: Problems) -> None:
    """Both profiles render, with the objects the issue asks for: per service
    a Deployment, Service, ServiceAccount, ConfigMap, PodDisruptionBudget,
    NetworkPolicy and Certificate; HPAs only where enabled; no Secret."""
    chart = load_chart()
    for profile, values in profiles().items():
        try:
            objects = render(values, chart)
        except Exception as e:
            p.add(profile, f"does not render: {e}")
            continue
        merged = merged_values(values, chart)
        for key, (name, _) in SERVICES.items():
            full = f"{RELEASE}-{name}"
            for kind, obj_name in [
                ("Deployment", full),
                ("Service", full),
                ("ServiceAccount", full),
                ("ConfigMap", f"{full}-config"),
                ("PodDisruptionBudget", full),
                ("NetworkPolicy", full),
                ("Certificate", full),
            ]:
                p.expect(obj_name in by_name(objects, kind), profile, f"no {kind} {obj_name}")
            hpa = obj_name_in(objects, "HorizontalPodAutoscaler", full)
            wanted = merged["services"][key]["autoscaling"]["enabled"]
            p.expect(hpa == wanted, profile, f"{name}: HPA present = {hpa}, autoscaling.enabled = {wanted}")
        p.expect(not of_kind(objects, "Secret"), profile, "renders a Secret (secrets are references only)")
        policies = by_name(objects, "ConfigMap").get(f"{RELEASE}-policies")
        p.expect(policies is not None, profile, "no policy ConfigMap")
        if policies is not None:
            files = set(policies.get("data", {}))
            p.expect(any(f.endswith(".cedarschema") for f in files), profile, f"policy ConfigMap has no schema: {files}")
            p.expect(any(f.endswith(".cedar") for f in files), profile, f"policy ConfigMap has no policy: {files}")
    ha = profiles()["ha"]
    objects = render(ha, chart)
    hpas = {component(o) for o in of_kind(objects, "HorizontalPodAutoscaler")}
    p.expect(hpas == {"credential-issuer", "agent-facade"}, "ha", f"HPAs for {sorted(hpas)}")
    pvcs = of_kind(objects, "PersistentVolumeClaim")
    p.expect(not pvcs, "ha", f"PVCs with replicas on PostgreSQL: {[name_of(o) for o in pvcs]}")
    exposed = [s for s in of_kind(objects, "Service") if s["spec"].get("type", "ClusterIP") != "ClusterIP"]
    p.expect([component(s) for s in exposed] == ["agent-facade"], "ha", f"Services outside the cluster: {[name_of(s) for s in exposed]}")
    for s in exposed:
        p.expect([pt["name"] for pt in s["spec"]["ports"]] == ["grpc"], "ha", f"{name_of(s)} exposes {s['spec']['ports']}")
    # One replica on PostgreSQL still keeps the keys it generates on a volume.
    pg_single = {"postgres": {"enabled": True, "existingSecret": "tether-postgres"}}
    pvcs = {component(o) for o in of_kind(render(pg_single, chart), "PersistentVolumeClaim")}
    p.expect(pvcs == {"identity-exchange", "agent-facade"}, "postgres, one replica", f"PVCs for {sorted(pvcs)}")
    default_pvcs = {component(o) for o in of_kind(render(None, chart), "PersistentVolumeClaim")}
    p.expect(
        default_pvcs == {"identity-exchange", "credential-issuer", "ciba-orchestrator", "agent-facade"},
        "default",
        f"SQLite stores without a volume claim: PVCs only for {sorted(default_pvcs)}",
    )


def obj_name_in(objects: list[dict[str, Any]], kind: str, name: str) -> bool:
    return name in by_name(objects, kind)


def check_chart_validate(p: Problems) -> None:
    """Every rendered object against the Kubernetes schemas, strict."""
    import jsonschema
    import kubernetes_validate

    cert_schema = json.loads(CERT_SCHEMA.read_text())
    chart = load_chart()
    for profile, values in profiles().items():
        objects = render(values, chart)
        p.expect(len(objects) > 30, profile, f"only {len(objects)} objects rendered")
        for obj in objects:
            where = f"{profile} {name_of(obj)}"
            data = strip(obj)
            if data.get("apiVersion") == "cert-manager.io/v1":
                errors = sorted(jsonschema.Draft202012Validator(cert_schema).iter_errors(data), key=str)
                for e in errors:
                    p.add(where, f"{'/'.join(map(str, e.absolute_path))}: {e.message}")
                continue
            try:
                kubernetes_validate.validate(data, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = "/".join(map(str, getattr(e, "path", []) or []))
                p.add(where, f"{path}: {getattr(e, 'message', str(e)).splitlines()[0]}")
            except kubernetes_validate.SchemaNotFoundError:
                p.add(where, f"no schema for {data.get('apiVersion')} {data.get('kind')} in Kubernetes {KUBE_VERSION}")


def check_chart_lint(p: Problems) -> None:
    """helm lint, strict (warnings are errors), for both profiles."""
    h = helm()
    for profile, values in profiles().items():
        report = h.lint(str(CHART), values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}")
        for err in report.get("errors", []):
            p.add(profile, f"lint error: {err}")
        for m in report.get("messages", []):
            if m.get("severity", 0) >= 2:
                p.add(profile, f"lint {m.get('path')}: {m.get('error')}")


def service_toml(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    cm = by_name(objects, "ConfigMap")[f"{RELEASE}-{name}-config"]
    return tomllib.loads(cm["data"][f"{name}.toml"])


def container_env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def check_chart_containers(p: Problems) -> None:
    """Every container: gRPC startup/readiness/liveness probes on the ops
    port, the hardened securityContext, requests and limits; every pod: a
    grace period above the drain deadline, replicas told to the service,
    no service-account token unless the issuer logs in to Vault with it."""
    chart = load_chart()
    for profile, values in profiles().items():
        objects = render(values, chart)
        merged = merged_values(values, chart)
        ops_port = merged["ops"]["port"]
        hpas = {o["spec"]["scaleTargetRef"]["name"]: o for o in of_kind(objects, "HorizontalPodAutoscaler")}
        pdbs = of_kind(objects, "PodDisruptionBudget")
        deployments = of_kind(objects, "Deployment")
        p.expect(len(deployments) == 5, profile, f"{len(deployments)} Deployments")
        for dep in deployments:
            name = component(dep)
            where = f"{profile} {name_of(dep)}"
            pod = dep["spec"]["template"]["spec"]
            psc = pod.get("securityContext", {})
            config = service_toml(objects, name)
            drain = config["server"]["drain_timeout_secs"]
            p.expect(
                pod.get("terminationGracePeriodSeconds", 30) > drain,
                where,
                f"terminationGracePeriodSeconds {pod.get('terminationGracePeriodSeconds')} not above drain_timeout_secs {drain}",
            )
            p.expect(pod.get("automountServiceAccountToken") is False, where, "service-account token automounted")
            for flag in ("hostNetwork", "hostPID", "hostIPC"):
                p.expect(not pod.get(flag), where, f"{flag} set")
            p.expect(psc.get("runAsNonRoot") is True, where, "pod securityContext.runAsNonRoot is not true")
            p.expect(pod.get("topologySpreadConstraints"), where, "no topology spread")
            selector = dep["spec"]["selector"]["matchLabels"]
            p.expect(
                any(pdb["spec"]["selector"]["matchLabels"] == selector for pdb in pdbs),
                where,
                "no PodDisruptionBudget selects it",
            )
            for vol in pod.get("volumes", []):
                p.expect("hostPath" not in vol, where, f"hostPath volume {vol['name']}")
                if "projected" in vol:
                    p.expect(name == "credential-issuer", where, f"projected token volume {vol['name']}")
            containers = pod.get("containers", []) + pod.get("initContainers", [])
            p.expect(len(pod.get("containers", [])) == 1, where, "not exactly one container")
            for c in containers:
                cw = f"{where} container {c['name']}"
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    pr = c.get(probe)
                    if not pr:
                        p.add(cw, f"no {probe}")
                        continue
                    p.expect(pr.get("grpc", {}).get("port") == ops_port, cw, f"{probe} is not gRPC health on the ops port {ops_port}: {pr}")
                    # Liveness never follows readiness: an unready pod (Vault
                    # down) is taken out of the endpoints, not restarted.
                    want = "liveness" if probe != "readinessProbe" else None
                    p.expect(pr.get("grpc", {}).get("service") == want, cw, f"{probe} asks health name {pr.get('grpc', {}).get('service')!r}, not {want!r}")
                ports = {port.get("name"): port["containerPort"] for port in c.get("ports", [])}
                p.expect(ports.get("ops") == ops_port, cw, f"no `ops` port {ops_port}: {ports}")
                listen = config["server"]["listen"]
                p.expect(listen.endswith(f":{ports.get('grpc')}"), cw, f"server.listen {listen} is not the `grpc` port {ports.get('grpc')}")
                p.expect(
                    config["server"].get("ops_listen", "").endswith(f":{ops_port}"),
                    cw,
                    f"server.ops_listen {config['server'].get('ops_listen')} is not the ops port",
                )
                sc = c.get("securityContext", {})
                p.expect(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, cw, "runAsNonRoot not true")
                p.expect(sc.get("runAsUser", psc.get("runAsUser", 1)) != 0, cw, "runs as uid 0")
                p.expect(sc.get("readOnlyRootFilesystem") is True, cw, "root filesystem not read-only")
                p.expect(sc.get("allowPrivilegeEscalation") is False, cw, "privilege escalation allowed")
                p.expect(not sc.get("privileged"), cw, "privileged")
                caps = sc.get("capabilities", {})
                p.expect("ALL" in caps.get("drop", []), cw, f"capabilities not all dropped: {caps}")
                p.expect(not caps.get("add"), cw, f"capabilities added: {caps.get('add')}")
                seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {}))
                p.expect(seccomp.get("type") == "RuntimeDefault", cw, f"seccomp profile {seccomp}")
                res = c.get("resources", {})
                for part in ("requests", "limits"):
                    for what in ("cpu", "memory"):
                        p.expect(what in res.get(part, {}), cw, f"no {part}.{what}")
                image = c.get("image", "")
                p.expect(":latest" not in image and (":" in image or "@" in image), cw, f"image {image} not pinned")
                env = container_env(c)
                replicas = env.get("TETHER_SERVER__REPLICAS", {}).get("value")
                hpa = hpas.get(dep["metadata"]["name"])
                expected = max(dep["spec"].get("replicas", 1), hpa["spec"]["maxReplicas"]) if hpa else dep["spec"].get("replicas")
                p.expect(replicas == str(expected), cw, f"TETHER_SERVER__REPLICAS {replicas!r}, Deployment/HPA allow {expected}")
                otlp = merged["otlpEndpoint"]
                if otlp:
                    p.expect(env.get("OTEL_EXPORTER_OTLP_ENDPOINT", {}).get("value") == otlp, cw, "otlpEndpoint not passed")
                else:
                    p.expect("OTEL_EXPORTER_OTLP_ENDPOINT" not in env, cw, "OTEL endpoint set without otlpEndpoint")
            annotations = dep["spec"]["template"]["metadata"].get("annotations", {})
            p.expect(annotations.get("prometheus.io/port") == str(ops_port), where, "no Prometheus scrape annotation on the ops port")
            p.expect(annotations.get("prometheus.io/path") == "/metrics", where, "Prometheus path is not /metrics")


def peer_components(peers: list[dict[str, Any]]) -> tuple[set[str], list[dict[str, Any]]]:
    """Tether components selected by pod-only peers, and every other peer."""
    tether, other = set(), []
    for peer in peers:
        labels = peer.get("podSelector", {}).get("matchLabels", {})
        if set(peer) == {"podSelector"} and labels.get("app.kubernetes.io/instance") == RELEASE and "app.kubernetes.io/component" in labels:
            tether.add(labels["app.kubernetes.io/component"])
        else:
            other.append(peer)
    return tether, other


def check_chart_network_policies(p: Problems) -> None:
    """Only agents reach the facade; each internal service only its callers
    (the facade, and for the identity exchange the issuer and the CIBA
    orchestrator) and the operators; egress only to DNS, the services it
    calls, and the IdP, Vault, PostgreSQL and OTLP peers it needs."""
    chart = load_chart()
    for profile, values in profiles().items():
        objects = render(values, chart)
        merged = merged_values(values, chart)
        np = merged["networkPolicy"]
        services = merged["services"]
        policies = {component(o): o for o in of_kind(objects, "NetworkPolicy")}
        deployments = {component(o): o for o in of_kind(objects, "Deployment")}
        p.expect(set(policies) == set(deployments), profile, f"NetworkPolicies for {sorted(policies)}, Deployments {sorted(deployments)}")
        for name, pol in policies.items():
            where = f"{profile} NetworkPolicy {name}"
            spec = pol["spec"]
            dep = deployments.get(name)
            if dep:
                p.expect(spec["podSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"], where, "does not select the service's pods")
            p.expect(sorted(spec.get("policyTypes", [])) == ["Egress", "Ingress"], where, f"policyTypes {spec.get('policyTypes')}")
            key = next(k for k, (n, _) in SERVICES.items() if n == name)
            # Ingress.
            grpc_rules, ops_rules, ping_rules = [], [], []
            for rule in spec.get("ingress", []):
                ports = [pt.get("port") for pt in rule.get("ports", [])]
                if not rule.get("from") or not ports:
                    p.add(where, f"ingress rule open to everyone or every port: {rule}")
                    continue
                {"grpc": grpc_rules, "ops": ops_rules, "ping": ping_rules}.get(ports[0], []).append(rule)
                p.expect(len(ports) == 1 and ports[0] in ("grpc", "ops", "ping"), where, f"ingress to unexpected ports {ports}")
            grpc_from = [peer for r in grpc_rules for peer in r["from"]]
            comps, others = peer_components(grpc_from)
            p.expect(comps == CALLERS[name], where, f"gRPC callers {sorted(comps)}, expected {sorted(CALLERS[name])}")
            allowed = list(np.get("admin", []))
            if name == "agent-facade" or (name == "identity-exchange" and services[key].get("oauthFromAgents")):
                allowed += np["agents"]
            p.expect(
                sorted(map(json.dumps, others)) == sorted(map(json.dumps, allowed)),
                where,
                f"gRPC port open to {others}, expected only {allowed}",
            )
            if name == "agent-facade":
                p.expect(all(peer in others for peer in np["agents"]), where, "agents cannot reach the facade")
            ops_from = [peer for r in ops_rules for peer in r["from"]]
            p.expect(ops_from == np.get("metrics", []), where, f"ops port open to {ops_from}")
            if ping_rules:
                p.expect(name == "ciba-orchestrator", where, "ping port on another service")
            # Egress.
            dns = np["dns"]["peers"]
            needed_ext = set(EXTERNAL_EGRESS[name])
            if key in STATEFUL and merged["postgres"]["enabled"]:
                needed_ext.add("postgres")
            if merged["otlpEndpoint"]:
                needed_ext.add("otlp")
            seen_ext, seen_callees, saw_dns = set(), set(), False
            for rule in spec.get("egress", []):
                to = rule.get("to")
                ports = rule.get("ports")
                if not to or not ports:
                    p.add(where, f"egress rule open to everything: {rule}")
                    continue
                if to == dns:
                    saw_dns = True
                    p.expect({pt["port"] for pt in ports} == set(np["dns"]["ports"]), where, f"DNS egress ports {ports}")
                    continue
                comps, others = peer_components(to)
                if comps and not others:
                    seen_callees |= comps
                    for c in comps:
                        callee_key = next(k for k, (n, _) in SERVICES.items() if n == c)
                        p.expect([pt["port"] for pt in ports] == [services[callee_key]["port"]], where, f"egress to {c} on {ports}")
                    continue
                match = [d for d in ("idp", "vault", "postgres", "otlp") if np[d]["peers"] == to and sorted(pt["port"] for pt in ports) == sorted(np[d]["ports"])]
                if match:
                    seen_ext |= set(match)
                else:
                    p.add(where, f"egress to something not configured: {rule}")
            p.expect(saw_dns, where, "no DNS egress")
            expected_callees = {n for n, callers in CALLERS.items() if name in callers}
            p.expect(seen_callees == expected_callees, where, f"calls {sorted(seen_callees)}, expected {sorted(expected_callees)}")
            p.expect(seen_ext == needed_ext, where, f"external egress {sorted(seen_ext)}, expected {sorted(needed_ext)}")
            # The services the configuration names are the ones the policy lets it call.
            config = service_toml(objects, name)
            urls = [config.get("upstreams", {}).get(k) for k in ("identity_exchange", "policy_decision", "credential_issuer", "ciba_orchestrator")]
            urls += [config.get("sessions", {}).get("identity_exchange"), config.get("sessions", {}).get("jwks_url")]
            for url in filter(None, urls):
                m = re.match(r"https://([^:/]+):(\d+)", url)
                if not m:
                    p.add(where, f"internal URL {url} is not https://host:port")
                    continue
                host, port = m.group(1), int(m.group(2))
                svc = by_name(objects, "Service").get(host)
                p.expect(svc is not None, where, f"{url}: no Service {host}")
                if svc:
                    p.expect(any(sp["port"] == port and sp["name"] == "grpc" for sp in svc["spec"]["ports"]), where, f"{url}: Service {host} has no gRPC port {port}")
                    p.expect(component(svc) in expected_callees, where, f"{url}: calls {component(svc)}, which its NetworkPolicy does not allow")


# A key or variable name that holds a secret itself (`token_file` names a
# file, `token_issuer` a URL: neither is one).
SECRET_KEY = re.compile(r"(?i)(^|_)(password|passwd|secret|secret_id|token|private_key|api_key|client_secret)$")
URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@")
PEM = re.compile(r"-----BEGIN [A-Z ]*(PRIVATE KEY|CERTIFICATE)-----")


def toml_items(table: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(table, dict):
        for k, v in table.items():
            yield from toml_items(v, f"{path}.{k}" if path else k)
    elif isinstance(table, list):
        for i, v in enumerate(table):
            yield from toml_items(v, f"{path}[{i}]")
    else:
        yield path, table


def secret_findings(objects: list[dict[str, Any]], text: str) -> list[str]:
    """Plaintext secrets in rendered objects: Secret objects, secret-looking
    environment values, secret keys or password URLs in configuration files,
    PEM blocks anywhere."""
    found = []
    if PEM.search(text):
        found.append("a PEM block in the rendered output")
    if URL_WITH_PASSWORD.search(text):
        found.append(f"a URL with a password: {URL_WITH_PASSWORD.search(text).group(0)[:12]}…")
    for obj in objects:
        where = name_of(obj)
        if obj.get("kind") == "Secret":
            found.append(f"{where}: a Secret rendered from values")
        if obj.get("kind") == "ConfigMap":
            for file, content in (obj.get("data") or {}).items():
                if file.endswith(".toml"):
                    for key, value in toml_items(tomllib.loads(content)):
                        last = key.rsplit(".", 1)[-1]
                        if SECRET_KEY.search(last):
                            found.append(f"{where} {file}: `{key}` holds a secret inline")
        pod = obj.get("spec", {}).get("template", {}).get("spec", {})
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            for e in c.get("env", []):
                if "value" in e and (SECRET_KEY.search(e["name"]) or e["name"].endswith("__URL")):
                    found.append(f"{where} env {e['name']} has a plaintext value")
            if c.get("envFrom"):
                found.append(f"{where}: envFrom (unreviewable)")
    return found


def check_chart_no_plaintext_secrets(p: Problems) -> None:
    """No secret in the rendered output of either profile; every secret the
    HA profile needs is a reference to a Secret named in its values; and the
    scan itself finds a planted one (so it can fail)."""
    chart = load_chart()
    for profile, values in profiles().items():
        objects = render(values, chart)
        for f in secret_findings(objects, rendered_text(values, chart)):
            p.add(profile, f)
    ha = profiles()["ha"]
    objects = render(ha, chart)
    refs = set()
    for dep in of_kind(objects, "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        for vol in pod.get("volumes", []):
            if "secret" in vol:
                refs.add(vol["secret"]["secretName"])
        for c in pod["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add(ref["name"])
    for needed in ("tether-postgres", "tether-vault-approle", "tether-ciba-client", "tether-signing-keys", "tether-audit-key"):
        p.expect(needed in refs, "ha", f"the Secret {needed} is not referenced")
    # The scanner finds what it looks for.
    planted = copy.deepcopy(objects)
    cm = by_name(planted, "ConfigMap")[f"{RELEASE}-credential-issuer-config"]
    cm["data"]["credential-issuer.toml"] += '\n[planted]\nsecret_id = "s3cr3t"\n'
    p.expect(secret_findings(planted, ""), "self-test", "a planted inline secret was not found")
    p.expect(secret_findings([], "url = postgres://u:pw@db/x"), "self-test", "a planted password URL was not found")


STATEFUL_SCALE = [
    ("replicas", lambda key: nested(f"services.{key}.replicas", 2)),
    ("autoscaling", lambda key: nested(f"services.{key}.autoscaling", {"enabled": True, "minReplicas": 2, "maxReplicas": 4})),
]

SHARED_STATE = {
    "postgres": {"enabled": True, "existingSecret": "tether-postgres"},
    "services": {
        "identityExchange": {"signingKeys": {"existingSecret": "tether-signing-keys"}, "config": {"tokens": {"keys_reload_secs": 30, "key_activation_secs": 120}}},
        "agentFacade": {"audit": {"keySecret": "tether-audit-key"}},
    },
}


def check_chart_schema_refuses_sqlite_replicas(p: Problems) -> None:
    """More than one replica (or an autoscaler) of a stateful service on
    SQLite is refused at install time; on PostgreSQL it installs; the
    stateless PDP scales on its own."""
    chart = load_chart()
    for key in sorted(STATEFUL):
        for how, make in STATEFUL_SCALE:
            err = expect_refused(chart, make(key))
            p.expect(err is not None, f"{key} {how}", "SQLite with more than one replica was accepted")
            if err:
                p.expect("/postgres" in err, f"{key} {how}", f"refused, but not for the store: {err[:300]}")
            err = expect_refused(chart, deep_merge(SHARED_STATE, make(key)))
            p.expect(err is None, f"{key} {how} on PostgreSQL", f"refused: {(err or '')[:300]}")
    err = expect_refused(chart, nested("services.policyDecision.replicas", 4))
    p.expect(err is None, "policyDecision replicas", f"the stateless PDP may not scale: {(err or '')[:300]}")
    err = expect_refused(chart, {"postgres": {"enabled": True}})
    p.expect(err is not None, "postgres", "PostgreSQL without a Secret for its URL was accepted")


BAD_VALUES: list[tuple[str, dict[str, Any]]] = [
    ("unknown top-level key", {"replicaCount": 3}),
    ("writable root filesystem", nested("containerSecurityContext.readOnlyRootFilesystem", False)),
    ("root user", nested("containerSecurityContext.runAsNonRoot", False)),
    ("privilege escalation", nested("containerSecurityContext.allowPrivilegeEscalation", True)),
    ("privileged", nested("containerSecurityContext.privileged", True)),
    ("capabilities kept", nested("containerSecurityContext.capabilities", {"drop": []})),
    ("unconfined seccomp", nested("containerSecurityContext.seccompProfile", {"type": "Unconfined"})),
    ("no memory limit", nested("services.agentFacade.resources.limits.memory", None)),
    ("inline Vault token", nested("services.credentialIssuer.config.vault.auth", {"method": "token", "token": "hvs.x"})),
    ("inline AppRole secret", nested("services.credentialIssuer.config.vault.auth", {"method": "approle", "role_id": "r", "secret_id": "s"})),
    ("store URL in config", nested("services.credentialIssuer.config.store.url", "postgres://tether:pw@db/tether")),
    ("audit URL in config", nested("services.agentFacade.config.audit.url", "postgres://tether:pw@db/tether")),
    ("replicas in config", nested("services.cibaOrchestrator.config.server.replicas", 1)),
    ("test hooks", nested("services.credentialIssuer.config.test_hooks.pause_after_vault_issue_ms", 1)),
    ("secret in extraEnv", nested("services.agentFacade.extraEnv", [{"name": "DB_PASSWORD", "value": "pw"}])),
    ("no TLS source", {"tls": {"certManager": {"enabled": False}}}),
    ("AppRole without its secret", nested("vault.auth", {"method": "approle", "approle": {"roleId": "r", "existingSecret": ""}})),
    ("bad port", nested("services.policyDecision.port", 70000)),
    ("bad trust domain", {"trustDomain": "Not A Domain"}),
    ("bad image digest", nested("image.digest", "latest")),
    ("ping without an https endpoint", nested("services.cibaOrchestrator.ping", {"enabled": True, "notificationEndpoint": "http://x/ciba/notify"})),
    ("network peer that allows everything", nested("networkPolicy.agents", [{}])),
    ("policy file of another kind", nested("policies.files", {"run.sh": "rm -rf /"})),
    ("zero replicas", nested("services.agentFacade.replicas", 0)),
    ("host path volume", nested("services.policyDecision.extraVolumes", [{"name": "host", "hostPath": {"path": "/"}}])),
    ("monitoring URL in config", nested("services.agentFacade.config.monitoring.url", "postgres://tether:pw@db/tether")),
    ("inline webhook secret", nested("services.agentFacade.config.monitoring.webhook.secret", "s3cr3t")),
    ("inline store URL in extraEnv", nested("services.cibaOrchestrator.extraEnv", [{"name": "TETHER_STORE__URL", "value": "postgres://u:pw@db/x"}])),
    ("shutdown delay past the drain deadline", {"shutdown": {"shutdownDelaySeconds": 30, "drainTimeoutSeconds": 20}}),
]


def check_chart_schema_refuses_bad_values(p: Problems) -> None:
    """Values that break the schema fail at install time, each for a reason
    the schema names; the defaults and the HA profile pass."""
    chart = load_chart()
    for what, values in BAD_VALUES:
        err = expect_refused(chart, values)
        p.expect(err is not None, what, f"accepted: {values}")
        if err is not None:
            # The schema, or (for a rule between two values) the chart's own `fail`.
            p.expect("schema" in err or "must be less than" in err, what, f"refused, but not for its values: {err[:300]}")
    for profile, values in profiles().items():
        err = expect_refused(chart, values)
        p.expect(err is None, profile, f"refused: {(err or '')[:300]}")
    secret_env = nested("services.cibaOrchestrator.extraEnv", [{"name": "WEBHOOK_SECRET", "valueFrom": {"secretKeyRef": {"name": "hooks", "key": "secret"}}}])
    err = expect_refused(chart, secret_env)
    p.expect(err is None, "secret variable from a Secret", f"refused: {(err or '')[:300]}")


# --------------------------------------------------------------------------
# Running the real binaries on the rendered configuration


def clean_env() -> dict[str, str]:
    """This environment without configuration: TETHER_* variables are
    configuration to a service, OTEL_* telemetry settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("TETHER_", "OTEL_"))}


def remap(value: Any, mounts: dict[str, Path]) -> Any:
    """Paths under a mount point → the same path under its local stand-in."""
    if isinstance(value, dict):
        return {k: remap(v, mounts) for k, v in value.items()}
    if isinstance(value, list):
        return [remap(v, mounts) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        for target in sorted(mounts, key=len, reverse=True):
            if value == target or value.startswith(target.rstrip("/") + "/"):
                return str(mounts[target]) + value[len(target):]
    return value


def toml_dumps(table: dict[str, Any]) -> str:
    """A TOML writer for what tomllib read (tables, arrays, scalars)."""

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(k)} = {scalar(x)}" for k, x in v.items()) + " }"
        raise TypeError(f"cannot write {type(v)}")

    lines: list[str] = []

    def table_out(t: dict[str, Any], path: list[str]) -> None:
        for k, v in t.items():
            if not isinstance(v, dict) and not (isinstance(v, list) and v and all(isinstance(x, dict) for x in v)):
                lines.append(f"{json.dumps(k)} = {scalar(v)}")
        for k, v in t.items():
            header = ".".join(json.dumps(x) for x in path + [k])
            if isinstance(v, dict):
                lines.append(f"\n[{header}]")
                table_out(v, path + [k])
            elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                for item in v:
                    lines.append(f"\n[[{header}]]")
                    for ik, iv in item.items():
                        lines.append(f"{json.dumps(ik)} = {scalar(iv)}")

    table_out(table, [])
    return "\n".join(lines) + "\n"


def validate_only(bin_dir: Path, binary: str, config: dict[str, Any], env: dict[str, str], mounts: dict[str, Path], work: Path) -> tuple[int, str]:
    """Runs `<binary> --config FILE --validate-only` with `env` on `config`
    whose paths under each mount point are moved to its local stand-in."""
    path = work / f"{binary}.toml"
    path.write_text(toml_dumps(remap(config, mounts)))
    exe = bin_dir / binary
    if not os.access(exe, os.X_OK):
        return 127, f"{exe} is not an executable"
    run_env = clean_env()
    run_env.update({k: str(remap(v, mounts)) for k, v in env.items()})
    out = subprocess.run(
        [str(exe), "--config", str(path), "--validate-only"],
        env=run_env,
        cwd=work,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.returncode, (out.stdout + out.stderr).strip()


def pod_inputs(objects: list[dict[str, Any]], dep: dict[str, Any], work: Path) -> tuple[dict[str, Any], dict[str, str], dict[str, Path]]:
    """The configuration file, environment and mounts of a Deployment's
    container, with ConfigMap volumes written out locally and every Secret
    volume an empty stand-in (what it holds is never read by --validate-only)."""
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    configmaps = by_name(objects, "ConfigMap")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts: dict[str, Path] = {}
    for m in c.get("volumeMounts", []):
        local = work / "mounts" / m["name"]
        local.mkdir(parents=True, exist_ok=True)
        vol = volumes[m["name"]]
        if "configMap" in vol:
            # A ConfigMap the operator brings (vault.caConfigMap) is an
            # empty stand-in, like a Secret.
            cm = configmaps.get(vol["configMap"]["name"], {})
            for file, content in (cm.get("data") or {}).items():
                (local / file).write_text(content)
        mounts[m["mountPath"]] = local
    args = c.get("args", [])
    if args[:1] != ["--config"] or len(args) != 2:
        raise RuntimeError(f"container args {args} are not `--config FILE`")
    config_path = args[1]
    config_file = remap(config_path, mounts)
    config = tomllib.loads(Path(config_file).read_text())
    env: dict[str, str] = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif e.get("valueFrom", {}).get("secretKeyRef") and e["name"].endswith("__URL"):
            env[e["name"]] = SECRET_PLACEHOLDER_URL
        else:
            raise RuntimeError(f"env {e['name']}: no stand-in for {e.get('valueFrom')}")
    return config, env, mounts


def require_bin_dir(bin_dir: str | None) -> Path:
    if not bin_dir:
        raise SystemExit("error: --bin-dir DIR (the service binaries) is required for this check")
    return Path(bin_dir)


def check_chart_service_configs(p: Problems, bin_dir: Path) -> None:
    """Each service's rendered configuration, with the Deployment's
    environment and mounts, passes the real binary's --validate-only (so
    every key is one the service accepts); an unknown key fails it."""
    chart = load_chart()
    cases = list(profiles().items())
    # A control: a key no service accepts, which the schema lets through
    # (`config` is free-form), must fail the binary.
    cases.append(("control", nested("services.policyDecision.config.policy.colour", "blue")))
    runs = []
    for profile, values in cases:
        objects = render(values, chart)
        for dep in of_kind(objects, "Deployment"):
            if profile != "control" or component(dep) == "policy-decision":
                runs.append((profile, objects, dep))

    def run(case: tuple[str, list[dict[str, Any]], dict[str, Any]]) -> tuple[str, str, int, str]:
        profile, objects, dep = case
        name = component(dep)
        with tempfile.TemporaryDirectory(prefix=f"tether-deploy-{name}-") as tmp:
            try:
                config, env, mounts = pod_inputs(objects, dep, Path(tmp))
            except RuntimeError as e:
                return profile, name, -1, str(e)
            code, output = validate_only(bin_dir, BINARY_OF[name], config, env, mounts, Path(tmp))
        return profile, name, code, output

    # In parallel: a service given an OTLP endpoint spends most of its
    # --validate-only run waiting for the exporter's shutdown.
    with ThreadPoolExecutor(max_workers=8) as pool:
        for profile, name, code, output in pool.map(run, runs):
            if profile == "control":
                p.expect(code == 64 and "colour" in output, "control", f"an unknown key was not refused (exit {code}): {output}")
            else:
                p.expect(code == 0, f"{profile} {name}", f"--validate-only exit {code}: {output}")


# --------------------------------------------------------------------------
# Compose


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def compose_tether_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in doc["services"].items() if name in BINARY_OF}


def parse_volume(spec: str) -> tuple[str, str, bool]:
    parts = spec.split(":")
    return parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")


def compose_env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def check_compose_static(p: Problems) -> None:
    """The compose file parses; the five services, PostgreSQL, OpenBao, the
    IdP and Jaeger are there; every long-running service has a health
    check; the Tether services are hardened as in the chart, their ports
    are their configured listen ports, every path in their configuration
    lies on one of their volumes, and the upstreams they name are compose
    services on their listen ports."""
    doc = compose()
    services = doc.get("services", {})
    for needed in list(BINARY_OF) + ["postgres", "openbao", "idp", "jaeger"]:
        p.expect(needed in services, "compose", f"no service {needed}")
    one_shot = {
        dep
        for svc in services.values()
        for dep, cond in (svc.get("depends_on") or {}).items()
        if isinstance(cond, dict) and cond.get("condition") == "service_completed_successfully"
    }
    for name, svc in services.items():
        where = f"compose {name}"
        for dep, cond in (svc.get("depends_on") or {}).items():
            p.expect(dep in services, where, f"depends on unknown service {dep}")
            if isinstance(cond, dict) and cond.get("condition") == "service_healthy":
                p.expect("healthcheck" in services.get(dep, {}), where, f"waits for {dep} to be healthy, which has no health check")
        if name in one_shot:
            p.expect(svc.get("restart") == "no", where, "a one-shot job that restarts")
            continue
        hc = svc.get("healthcheck")
        p.expect(bool(hc and hc.get("test")) and not hc.get("disable"), where, "no health check")
        for spec in svc.get("volumes", []):
            source, _, _ = parse_volume(spec)
            if source.startswith("."):
                p.expect((COMPOSE.parent / source).exists(), where, f"bind mount source {source} does not exist")
            else:
                p.expect(source in (doc.get("volumes") or {}), where, f"volume {source} is not declared")
    dockerfile_targets = {stage["name"] for stage in dockerfile_stages()}
    for name, svc in compose_tether_services(doc).items():
        where = f"compose {name}"
        p.expect(svc.get("read_only") is True, where, "root filesystem not read-only")
        p.expect("ALL" in svc.get("cap_drop", []), where, "capabilities not dropped")
        p.expect(str(svc.get("user", "0")).split(":")[0] not in ("0", "root"), where, "runs as root")
        p.expect("no-new-privileges:true" in svc.get("security_opt", []), where, "privilege escalation allowed")
        build = svc.get("build", {})
        p.expect(build.get("target") == name and build.get("target") in dockerfile_targets, where, f"build target {build.get('target')} is not the Dockerfile's {name} stage")
        p.expect((COMPOSE.parent / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE, where, "not built from deploy/docker/Dockerfile")
        command = svc.get("command", [])
        if command[:1] != ["--config"] or len(command) != 2:
            p.add(where, f"command {command} is not `--config FILE`")
            continue
        mounts = {target: source for source, target, _ in map(parse_volume, svc.get("volumes", []))}
        source = mounts.get(command[1])
        if not source or not source.startswith("."):
            p.add(where, f"{command[1]} is not a file of the repository mounted in")
            continue
        config = tomllib.loads((COMPOSE.parent / source).read_text())
        listen_port = int(config["server"]["listen"].rsplit(":", 1)[1])
        ops_port = int(config["server"].get("ops_listen", ":0").rsplit(":", 1)[1])
        for port in svc.get("ports", []):
            host, _, container = str(port).rpartition(":")
            p.expect(int(container) == listen_port, where, f"publishes {port}, but listens on {listen_port}")
        test = svc["healthcheck"]["test"]
        own = ["CMD", f"/usr/local/bin/{BINARY_OF[name]}", "--probe", f"127.0.0.1:{ops_port}"]
        p.expect(test == own, where, f"health check {test} is not the service's own `--probe` of ops_listen port {ops_port}: {own}")
        for key, value in toml_items(config):
            if isinstance(value, str) and value.startswith("/"):
                path = value.split("?")[0]
                if value.startswith("sqlite://"):
                    continue
                p.expect(
                    any(path == t or path.startswith(t.rstrip("/") + "/") for t in mounts),
                    where,
                    f"`{key}` = {value} is on no volume of the service",
                )
            if isinstance(value, str) and value.startswith("sqlite://"):
                db = value[len("sqlite://"):].split("?")[0]
                p.expect(any(db.startswith(t.rstrip("/") + "/") for t in mounts), where, f"`{key}`: the SQLite file {db} is on no volume")
        for key in ("identity_exchange", "policy_decision", "credential_issuer", "ciba_orchestrator"):
            for url in (config.get("upstreams", {}).get(key), config.get("sessions", {}).get(key)):
                if not url:
                    continue
                m = re.match(r"https://([^:/]+):(\d+)", url)
                target = m and compose_tether_services(doc).get(m.group(1))
                if not target:
                    p.add(where, f"{url} names no Tether compose service")
                    continue
                target_config = tomllib.loads((COMPOSE.parent / parse_volume(next(v for v in target["volumes"] if v.split(":")[1] == target["command"][1]))[0]).read_text())
                p.expect(target_config["server"]["listen"].endswith(f":{m.group(2)}"), where, f"{url}: {m.group(1)} listens on {target_config['server']['listen']}")
        for var in compose_env(svc):
            p.expect(not SECRET_KEY.search(var), where, f"secret-looking variable {var} in plain text")


def check_compose_service_configs(p: Problems, bin_dir: Path) -> None:
    """Each Tether service of the compose file: its configuration file, with
    its environment and its mounts (bind mounts are the repository's files;
    named volumes empty stand-ins) passes the real binary's --validate-only."""
    doc = compose()

    def run(item: tuple[str, dict[str, Any]]) -> tuple[str, int, str]:
        name, svc = item
        with tempfile.TemporaryDirectory(prefix=f"tether-compose-{name}-") as tmp:
            work = Path(tmp)
            mounts: dict[str, Path] = {}
            for spec in svc.get("volumes", []):
                source, target, _ = parse_volume(spec)
                if source.startswith("."):
                    mounts[target] = (COMPOSE.parent / source).resolve()
                else:
                    local = work / "volumes" / source
                    local.mkdir(parents=True, exist_ok=True)
                    mounts[target] = local
            config = tomllib.loads(Path(remap(svc["command"][1], mounts)).read_text())
            code, output = validate_only(bin_dir, BINARY_OF[name], config, compose_env(svc), mounts, work)
        return name, code, output

    with ThreadPoolExecutor(max_workers=8) as pool:
        for name, code, output in pool.map(run, compose_tether_services(doc).items()):
            p.expect(code == 0, f"compose {name}", f"--validate-only exit {code}: {output}")


# --------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments
    dropped."""
    out, buf = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    if buf:
        raise ValueError("the Dockerfile ends inside a continued line")
    return out


def dockerfile_stages() -> list[dict[str, Any]]:
    args: dict[str, str] = {}
    stages: list[dict[str, Any]] = []
    for word, rest in dockerfile_instructions():
        if word == "ARG" and not stages:
            k, _, v = rest.partition("=")
            args[k] = v
        elif word == "FROM":
            m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$", rest, re.I)
            if not m:
                raise ValueError(f"cannot read FROM {rest}")
            base = re.sub(r"\$\{(\w+)\}", lambda a: args.get(a.group(1), a.group(0)), m.group(1))
            stages.append({"name": m.group(2), "base": base, "ins": []})
        elif stages:
            stages[-1]["ins"].append((word, rest))
        else:
            raise ValueError(f"{word} before the first FROM")
    return stages


def check_dockerfile(p: Problems) -> None:
    """The Dockerfile parses into stages; one target per service binary and
    one for the CLI; each final image is distroless, non-root, and runs the
    binary the build stage copied into it; bases are pinned by tag; no
    secret or remote file is baked in; the chart's and compose's image
    names are its targets."""
    try:
        stages = dockerfile_stages()
    except ValueError as e:
        p.add("Dockerfile", str(e))
        return
    by = {s["name"]: s for s in stages}
    p.expect(len(by) == len(stages), "Dockerfile", "a stage without a name or a name used twice")

    def chain(stage: dict[str, Any]) -> list[dict[str, Any]]:
        out = [stage]
        while out[-1]["base"] in by:
            out.append(by[out[-1]["base"]])
        return out

    build = by.get("build")
    if not build:
        p.add("Dockerfile", "no `build` stage")
        return
    build_run = " ".join(rest for word, rest in build["ins"] if word == "RUN")
    p.expect("--locked" in build_run and "--release" in build_run, "build", "not a --release --locked build")
    targets = {name: binary for name, binary in BINARY_OF.items()}
    targets["cli"] = "tether"
    for target, binary in targets.items():
        where = f"stage {target}"
        stage = by.get(target)
        if not stage:
            p.add(where, "missing")
            continue
        p.expect(f"--bin {binary}" in build_run, where, f"the build stage does not build {binary}")
        lineage = chain(stage)
        base = lineage[-1]["base"]
        p.expect(base.startswith("gcr.io/distroless/") and base.endswith(":nonroot"), where, f"base {base} is not a distroless nonroot image")
        ins = [i for s in reversed(lineage) for i in s["ins"]]
        users = [rest for word, rest in ins if word == "USER"]
        p.expect(bool(users) and users[-1].split(":")[0] not in ("0", "root"), where, f"runs as {users[-1] if users else 'the base image user'}")
        entry = [rest for word, rest in ins if word == "ENTRYPOINT"]
        path = f"/usr/local/bin/{binary}"
        p.expect(bool(entry) and json.loads(entry[-1]) == [path], where, f"ENTRYPOINT {entry[-1] if entry else None} is not [{path!r}]")
        copies = [rest for word, rest in ins if word == "COPY" and rest.startswith("--from=build") and rest.endswith(f" {path}")]
        p.expect(len(copies) == 1 and f"/{binary} " in copies[0], where, f"{binary} is not copied from the build stage to {path}")
        others = [rest for word, rest in stage["ins"] if word == "COPY" and "/out/bin/" in rest and not rest.endswith(f" {path}")]
        p.expect(not others, where, f"other binaries copied in: {others}")
        for word, rest in ins:
            p.expect(word not in ("RUN", "ADD"), where, f"{word} in a final image (no shell there): {rest[:60]}")
    for stage in stages:
        base = stage["base"]
        if base not in by:
            p.expect(":" in base and not base.endswith(":latest"), f"stage {stage['name']}", f"base {base} not pinned by tag")
        for word, rest in stage["ins"]:
            if word in ("ENV", "ARG"):
                var = rest.split("=", 1)[0].split()[0] if rest else ""
                p.expect(not SECRET_KEY.search(var), f"stage {stage['name']}", f"secret-looking {word} {var}")
            if word == "ADD":
                p.add(f"stage {stage['name']}", f"ADD {rest[:60]} (COPY only, nothing fetched)")
    ignore = DOCKERFILE.with_name("Dockerfile.dockerignore")
    p.expect(ignore.exists() and {"target/", ".tools/"} <= set(ignore.read_text().split()), "dockerignore", "target/ and .tools/ are not kept out of the build context")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key, (name, _) in SERVICES.items():
        p.expect(name in by, "chart", f"image {values['image']['repositoryPrefix']}/{name} has no Dockerfile target {name}")


# --------------------------------------------------------------------------

CHECKS: dict[str, Callable[..., None]] = {
    "chart-render": check_chart_render,
    "chart-validate": check_chart_validate,
    "chart-lint": check_chart_lint,
    "chart-containers": check_chart_containers,
    "chart-network-policies": check_chart_network_policies,
    "chart-no-plaintext-secrets": check_chart_no_plaintext_secrets,
    "chart-schema-refuses-sqlite-replicas": check_chart_schema_refuses_sqlite_replicas,
    "chart-schema-refuses-bad-values": check_chart_schema_refuses_bad_values,
    "chart-service-configs": check_chart_service_configs,
    "compose-static": check_compose_static,
    "compose-service-configs": check_compose_service_configs,
    "dockerfile": check_dockerfile,
}
NEEDS_BINARIES = {"chart-service-configs", "compose-service-configs"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("check", choices=sorted(CHECKS))
    parser.add_argument("--bin-dir", help="directory with the service binaries (configuration checks)")
    args = parser.parse_args()
    problems = Problems()
    try:
        if args.check in NEEDS_BINARIES:
            CHECKS[args.check](problems, require_bin_dir(args.bin_dir))
        else:
            CHECKS[args.check](problems)
    except Exception as e:  # a chart that does not render, a file that does not parse
        problems.add(args.check, f"{type(e).__name__}: {e}")
    if problems.items:
        print(f"{args.check}: {len(problems.items)} problem(s)", file=sys.stderr)
        for item in problems.items:
            print(f"  - {item}", file=sys.stderr)
        return 1
    print(f"{args.check}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
