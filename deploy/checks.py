"""Offline checks of the deployment files: a small kustomize-equivalent renderer, schema validation and the
invariants an operator relies on. ``python -m deploy.checks`` prints every problem and exits non-zero if any;
tests/deploy/ runs the same functions, and breaks each invariant on purpose to prove its check notices.

Each ``check_*`` function takes parsed documents and returns a list of problems (empty when all is well), so a
test can mutate a loaded copy and assert what is reported.
"""

from __future__ import annotations

import copy
import json
import re
import sys
import zoneinfo
from collections.abc import Iterable, Iterator
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
OVERLAY = DEPLOY / "k8s" / "overlays" / "ap-southeast-2"
BASE = DEPLOY / "k8s" / "base"
SCHEMAS = DEPLOY / "schemas"

AU_REGIONS = frozenset({"ap-southeast-2", "ap-southeast-4"})  # Sydney, Melbourne
# Any AWS region name, or a zone of one (ap-southeast-2a): what a region setting looks like wherever it is.
REGION_RE = re.compile(
    r"\b((?:af|ap|ca|cn|eu|il|me|mx|sa|us|us-gov)-(?:north|south|east|west|central|northeast|northwest|"
    r"southeast|southwest)-\d+)[a-z]?\b"
)
KUBERNETES_VERSION = "1.33"  # the EKS version the manifests target (docs/deploy.md)
CLUSTER_SCOPED = frozenset({"Namespace", "NodePool", "EC2NodeClass", "ClusterSecretStore", "ClusterRole",
                            "ClusterRoleBinding", "StorageClass", "PriorityClass"})
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject-v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda-triggerauthentication-v1alpha1.json",
    ("karpenter.sh/v1", "NodePool"): "karpenter-nodepool-v1.json",
    ("karpenter.k8s.aws/v1", "EC2NodeClass"): "karpenter-ec2nodeclass-v1.json",
    ("external-secrets.io/v1", "ExternalSecret"): "externalsecrets-externalsecret-v1.json",
    ("external-secrets.io/v1", "SecretStore"): "externalsecrets-secretstore-v1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring-podmonitor-v1.json",
}
POD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
MISTRAL_FLAGS = ("--tokenizer-mode", "--config-format", "--load-format", "--tool-call-parser")
PREWARM_SCHEDULE_HOUR = 7
PREWARM_TIMEZONE = "Australia/Sydney"
COOLDOWN_S = 300  # the brief's 5-minute cool-down


# --- rendering (the subset of kustomize these manifests use) ------------------------------------------------

def load_yaml(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def _merge(base, patch):
    """Strategic merge as kustomize does it for these kinds: maps merge key by key; lists of named maps
    (containers, env, volumes, ports) merge by name; other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if (isinstance(base, list) and isinstance(patch, list) and patch
            and all(isinstance(i, dict) and "name" in i for i in base + patch)):
        out = [copy.deepcopy(i) for i in base]
        index = {item["name"]: n for n, item in enumerate(out)}
        for item in patch:
            if item["name"] in index:
                out[index[item["name"]]] = _merge(out[index[item["name"]]], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def _set_image(container: dict, images: list[dict]) -> None:
    ref = container.get("image", "")
    name = re.split(r"[:@]", ref, maxsplit=1)[0]
    for image in images:
        if image["name"] == name:
            new = image.get("newName", name)
            if "digest" in image:
                container["image"] = f"{new}@{image['digest']}"
            else:
                container["image"] = f"{new}:{image.get('newTag', 'latest')}"


def pod_specs(doc: dict) -> Iterator[dict]:
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind == "CronJob":
        yield spec["jobTemplate"]["spec"]["template"]["spec"]
    elif kind in POD_KINDS:
        yield spec["template"]["spec"]


def containers(doc: dict, *, init: bool = True) -> Iterator[dict]:
    for spec in pod_specs(doc):
        yield from spec.get("containers", [])
        if init:
            yield from spec.get("initContainers", [])


def render(directory: Path = OVERLAY) -> list[dict]:
    """The documents ``kustomize build directory`` would print (for the features used here)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    docs: list[dict] = []
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        docs.extend(render(path) if path.is_dir() else load_yaml(path))
    for entry in kustomization.get("patches", []):
        for patch in load_yaml(directory / entry["path"]):
            target = entry.get("target") or {}
            kind, name = target.get("kind", patch["kind"]), target.get("name", patch["metadata"]["name"])
            matches = [n for n, d in enumerate(docs) if d["kind"] == kind and d["metadata"]["name"] == name]
            if not matches:
                raise ValueError(f"patch {entry['path']}: no {kind}/{name} to patch")
            for n in matches:
                docs[n] = _merge(docs[n], patch)
    namespace = kustomization.get("namespace")
    for doc in docs:
        if namespace and doc["kind"] not in CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = namespace
        for label in kustomization.get("labels", []):
            doc["metadata"].setdefault("labels", {}).update(label.get("pairs", {}))
        for container in containers(doc):
            _set_image(container, kustomization.get("images", []))
    return docs


# --- schema validation -----------------------------------------------------------------------------------

def schema_errors(docs: Iterable[dict]) -> list[str]:
    """Core kinds against Kubernetes' own OpenAPI schemas (kubernetes-validate, strict: unknown fields are
    errors); the operators' kinds against the CRD schemas vendored in deploy/schemas/."""
    import jsonschema
    import kubernetes_validate

    problems = []
    for doc in docs:
        where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        schema_file = CRD_SCHEMAS.get((doc.get("apiVersion"), doc.get("kind")))
        if schema_file:
            schema = json.loads((SCHEMAS / schema_file).read_text(encoding="utf-8"))
            validator = jsonschema.Draft7Validator(schema)
            problems.extend(f"{where}: {e.json_path}: {e.message}" for e in validator.iter_errors(doc))
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{where}: no schema for {doc.get('apiVersion')} {doc.get('kind')}")
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{where}: {exc.message}")
    return problems


def compose_schema_errors(compose: dict) -> list[str]:
    """deploy/compose.yaml against the compose-spec schema check-jsonschema vendors."""
    import check_jsonschema
    import jsonschema

    path = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(path.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"compose: {e.json_path}: {e.message}" for e in validator.iter_errors(compose)]


# --- invariants ------------------------------------------------------------------------------------------

def _strings(value, path="") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key, path)
            yield from _strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for n, item in enumerate(value):
            yield from _strings(item, f"{path}[{n}]")
    elif isinstance(value, str):
        yield path, value


def _name(doc: dict) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def check_regions(docs: Iterable) -> list[str]:
    """Every AWS region (or zone) named anywhere (ARNs, endpoints, settings, zones) is an Australian one."""
    problems = []
    for doc in docs:
        label = _name(doc) if isinstance(doc, dict) and "kind" in doc else "document"
        for path, text in _strings(doc):
            for region in REGION_RE.findall(text):
                if region not in AU_REGIONS:
                    problems.append(f"{label}{path}: region {region} is not an Australian region")
    return problems


def _component(doc: dict, component: str) -> bool:
    return doc.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/component") == component


def _vllm_arg(container: dict, flag: str) -> str | None:
    args = [*container.get("command", []), *container.get("args", [])]
    for n, arg in enumerate(args):
        if arg == flag:
            return args[n + 1] if n + 1 < len(args) and not args[n + 1].startswith("--") else ""
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def vllm_deployments(docs: Iterable[dict]) -> list[dict]:
    return [d for d in docs if d.get("kind") == "Deployment" and _component(d, "vllm")]


def check_vllm_scale_to_zero(docs: list[dict]) -> list[str]:
    """Each model's Deployment has a ScaledObject with minReplicaCount 0, the 5-minute cool-down, and
    Prometheus triggers on the gateway's pending requests and request rate for that model's served name."""
    problems = []
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d for d in docs if d.get("kind") == "ScaledObject"}
    for deployment in vllm_deployments(docs):
        name = deployment["metadata"]["name"]
        served = _vllm_arg(deployment["spec"]["template"]["spec"]["containers"][0], "--served-model-name")
        obj = scaled.get(name)
        if obj is None:
            problems.append(f"{name}: no KEDA ScaledObject")
            continue
        spec = obj["spec"]
        if spec.get("minReplicaCount") != 0:
            problems.append(f"{name}: minReplicaCount is {spec.get('minReplicaCount')!r}, not 0 (scale to zero)")
        if spec.get("cooldownPeriod") != COOLDOWN_S:
            problems.append(f"{name}: cooldownPeriod is {spec.get('cooldownPeriod')!r}, not {COOLDOWN_S}")
        queries = [t["metadata"].get("query", "") for t in spec.get("triggers", []) if t.get("type") == "prometheus"]
        for metric in ("wattle_pending_requests", "wattle_requests_total"):
            if not any(metric in q and f'model="{served}"' in q for q in queries):
                problems.append(f"{name}: no prometheus trigger on {metric} for model {served!r}")
    return problems


def check_gpu(docs: list[dict]) -> list[str]:
    """Model servers request (and limit) as many GPUs as their tensor-parallel size, and tolerate GPU nodes."""
    problems = []
    for deployment in vllm_deployments(docs):
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        tp = _vllm_arg(container, "--tensor-parallel-size") or "1"
        resources = container.get("resources", {})
        for part in ("requests", "limits"):
            gpus = str(resources.get(part, {}).get("nvidia.com/gpu", ""))
            if gpus != tp:
                problems.append(f"{name}: {part} nvidia.com/gpu is {gpus or 'missing'}, tensor parallel is {tp}")
        if not any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])):
            problems.append(f"{name}: no toleration for the GPU nodes' nvidia.com/gpu taint")
        for flag in MISTRAL_FLAGS:
            if _vllm_arg(container, flag) != "mistral":
                problems.append(f"{name}: {flag} is not mistral")
        if _vllm_arg(container, "--enable-prefix-caching") is None:
            problems.append(f"{name}: prefix caching is off")
    return problems


def check_non_root(docs: list[dict]) -> list[str]:
    """Every container runs as a non-root user without privilege escalation, capabilities or host access, under
    the RuntimeDefault seccomp profile: what the namespace's "restricted" Pod Security level admits."""
    problems = []
    for doc in docs:
        for pod in pod_specs(doc):
            for field in ("hostNetwork", "hostPID", "hostIPC"):
                if pod.get(field):
                    problems.append(f"{_name(doc)}: {field}")
            for volume in pod.get("volumes", []):
                if "hostPath" in volume:
                    problems.append(f"{_name(doc)}: hostPath volume {volume.get('name')}")
            pod_ctx = pod.get("securityContext", {})
            for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
                ctx = {**pod_ctx, **container.get("securityContext", {})}
                where = f"{_name(doc)} container {container.get('name')}"
                if ctx.get("runAsNonRoot") is not True:
                    problems.append(f"{where}: runAsNonRoot is not true")
                if ctx.get("runAsUser", 1) == 0:
                    problems.append(f"{where}: runAsUser is 0")
                if ctx.get("allowPrivilegeEscalation") is not False:
                    problems.append(f"{where}: allowPrivilegeEscalation is not false")
                if "ALL" not in ctx.get("capabilities", {}).get("drop", []):
                    problems.append(f"{where}: capabilities are not all dropped")
                if ctx.get("privileged"):
                    problems.append(f"{where}: privileged")
                if ctx.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
                    problems.append(f"{where}: no RuntimeDefault seccomp profile")
    return problems


def _probe_target(probe: dict | None) -> str | None:
    if not probe:
        return None
    if "httpGet" in probe:
        return probe["httpGet"].get("path")
    if "exec" in probe:
        return " ".join(probe["exec"].get("command", []))
    return "tcp"


def check_probes(docs: list[dict]) -> list[str]:
    """Long-running containers have readiness and liveness probes; the web tier's readiness is /readyz's
    verdict (deploy/readiness.py) and its liveness /healthz; vLLM's readiness is /health."""
    problems = []
    for doc in docs:
        if doc.get("kind") not in ("Deployment", "StatefulSet", "DaemonSet"):
            continue
        for container in containers(doc, init=False):
            where = f"{_name(doc)} container {container.get('name')}"
            readiness, liveness = container.get("readinessProbe"), container.get("livenessProbe")
            if not readiness:
                problems.append(f"{where}: no readinessProbe")
            if not liveness:
                problems.append(f"{where}: no livenessProbe")
            if _component(doc, "web"):
                target = _probe_target(readiness) or ""
                if readiness and target != "/readyz" and "deploy/readiness.py" not in target:
                    problems.append(f"{where}: readiness is not /readyz")
                if liveness and _probe_target(liveness) != "/healthz":
                    problems.append(f"{where}: liveness is not /healthz")
            if _component(doc, "vllm") and readiness and _probe_target(readiness) != "/health":
                problems.append(f"{where}: readiness is not vLLM's /health")
    return problems


# Settings whose value is a secret. Connection URLs are secret only with a password in them, which
# SECRET_VALUE_RE finds wherever it is.
SECRET_NAME_RE = re.compile(r"(SECRET|PASSWORD|PASSWD|TOKEN|PEPPER|API_KEY|PRIVATE|CREDENTIAL|BACKENDS|AUTH)",
                            re.IGNORECASE)
SECRET_VALUE_RE = re.compile(
    r"(sk_live_|sk_test_|rk_live_|whsec_|wtl_[A-Za-z0-9]|AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}|-----BEGIN|hf_[A-Za-z0-9]{20,}"
    r"|[a-z]+://[^/\s:@]*:[^/\s@]+@)"
)
# Names that look secret but hold none: references to files or to where a secret lives.
NOT_SECRET_NAMES = frozenset({"METRICS_ALLOWED_NETWORKS", "INFERENCE_KEY_CACHE_TTL_S"})


def check_no_secret_literals(docs: list[dict]) -> list[str]:
    """No Secret objects with values, no secret-looking setting given a literal value, no credential-shaped
    string anywhere: secrets come from External Secrets (or compose's secret files)."""
    problems = []
    for doc in docs:
        if doc.get("kind") == "Secret" and (doc.get("data") or doc.get("stringData")):
            problems.append(f"{_name(doc)}: a Secret with literal values")
        if doc.get("kind") == "ConfigMap":
            for key, value in (doc.get("data") or {}).items():
                if SECRET_NAME_RE.search(key) and key not in NOT_SECRET_NAMES and value:
                    problems.append(f"{_name(doc)}: {key} looks secret and is in a ConfigMap")
        for container in containers(doc):
            for env in container.get("env", []):
                if ("value" in env and SECRET_NAME_RE.search(env["name"]) and not env["name"].endswith("_FILE")
                        and env["name"] not in NOT_SECRET_NAMES):
                    problems.append(f"{_name(doc)}: env {env['name']} has a literal value")
        for path, text in _strings(doc):
            if SECRET_VALUE_RE.search(text):
                problems.append(f"{_name(doc)}{path}: a credential-shaped literal")
    return problems


def cron_errors(schedule: str) -> list[str]:
    """Five valid cron fields (Kubernetes' syntax: minute hour day-of-month month day-of-week)."""
    from celery.schedules import crontab_parser

    fields = schedule.split()
    if len(fields) != 5:
        return [f"schedule {schedule!r} has {len(fields)} fields, not 5"]
    problems = []
    for text, (max_, min_), label in zip(
        fields, ((60, 0), (24, 0), (31, 1), (12, 1), (7, 0)), ("minute", "hour", "day of month", "month",
                                                                "day of week"), strict=True):
        try:
            crontab_parser(max_, min_).parse(text.replace("?", "*"))
        except ValueError as exc:
            problems.append(f"schedule {schedule!r}: bad {label} {text!r} ({exc})")
    return problems


def check_prewarm(docs: list[dict]) -> list[str]:
    """Each model has a pre-warm CronJob at 07:00 Sydney time on business days, and its ScaledObject listens
    to it."""
    problems = []
    cronjobs = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "CronJob" and _component(d, "prewarm")}
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d for d in docs if d.get("kind") == "ScaledObject"}
    for deployment in vllm_deployments(docs):
        model = deployment["metadata"]["labels"].get("wattle.io/model")
        name = f"vllm-prewarm-{model}"
        job = cronjobs.get(name)
        if job is None:
            problems.append(f"{deployment['metadata']['name']}: no pre-warm CronJob {name}")
            continue
        spec = job["spec"]
        schedule = spec.get("schedule", "")
        errors = cron_errors(schedule)
        problems.extend(f"{name}: {e}" for e in errors)
        if not errors:
            minute, hour, dom, month, dow = schedule.split()
            if (minute, hour) != ("0", str(PREWARM_SCHEDULE_HOUR)) or (dom, month) != ("*", "*"):
                problems.append(f"{name}: schedule {schedule!r} is not 07:00 every business day")
            from celery.schedules import crontab_parser

            if crontab_parser(7, 0).parse(dow) != {1, 2, 3, 4, 5}:
                problems.append(f"{name}: schedule {schedule!r} is not Monday to Friday")
        zone = spec.get("timeZone")
        if zone != PREWARM_TIMEZONE:
            problems.append(f"{name}: timeZone is {zone!r}, not {PREWARM_TIMEZONE}")
        else:
            zoneinfo.ZoneInfo(zone)
        trigger_queries = [t["metadata"].get("query", "") for t in
                           scaled.get(deployment["metadata"]["name"], {}).get("spec", {}).get("triggers", [])]
        if not any(name in q for q in trigger_queries):
            problems.append(f"{deployment['metadata']['name']}: its ScaledObject ignores {name}")
    return problems


def check_single_beat(docs: list[dict]) -> list[str]:
    beats = [d for d in docs if d.get("kind") == "Deployment" and _component(d, "beat")]
    problems = [] if len(beats) == 1 else [f"{len(beats)} beat Deployments, not 1"]
    for beat in beats:
        if beat["spec"].get("replicas") != 1:
            problems.append(f"{_name(beat)}: replicas {beat['spec'].get('replicas')!r}, not 1")
        if beat["spec"].get("strategy", {}).get("type") != "Recreate":
            problems.append(f"{_name(beat)}: a rolling update would run two beats at once")
        name = beat["metadata"]["name"]
        for doc in docs:
            target = (doc.get("spec") or {}).get("scaleTargetRef", {})
            if doc.get("kind") in ("ScaledObject", "HorizontalPodAutoscaler") and target.get("name") == name:
                problems.append(f"{_name(doc)} scales the beat")
    return problems


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _pod_labels(docs: list[dict]) -> list[tuple[str, dict]]:
    out = []
    for doc in docs:
        spec = doc.get("spec") or {}
        template = spec.get("jobTemplate", {}).get("spec", {}).get("template") if doc.get("kind") == "CronJob" \
            else spec.get("template")
        if doc.get("kind") in POD_KINDS and template:
            out.append((_name(doc), template.get("metadata", {}).get("labels", {})))
    return out


def check_network(docs: list[dict]) -> list[str]:
    """Default deny; vLLM admits the web tier (the gateway) only; only the app's pods may send to PostgreSQL
    (5432) and Redis (6379)."""
    policies = [d for d in docs if d.get("kind") == "NetworkPolicy"]
    problems = []
    if not any(p["spec"].get("podSelector") == {} and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
               and not p["spec"].get("ingress") and not p["spec"].get("egress") for p in policies):
        problems.append("no default-deny NetworkPolicy for ingress and egress")
    pods = _pod_labels(docs)
    for policy in policies:
        spec = policy["spec"]
        selected = [(n, labels) for n, labels in pods if _selects(spec.get("podSelector", {}), labels)]
        for rule in spec.get("ingress", []):
            if any(labels.get("app.kubernetes.io/component") == "vllm" for _n, labels in selected):
                for peer in rule.get("from", []):
                    sel = peer.get("podSelector")
                    if "ipBlock" in peer or "namespaceSelector" in peer or sel is None or \
                            (sel.get("matchLabels") or {}).get("app.kubernetes.io/component") != "web":
                        problems.append(f"{_name(policy)}: lets something other than the gateway reach vLLM")
        for rule in spec.get("egress", []):
            ports = {p.get("port") for p in rule.get("ports", [])}
            if not rule.get("ports") or ports & {5432, 6379}:
                for pod_name, labels in selected:
                    if labels.get("wattle.io/tier") != "app":
                        problems.append(f"{_name(policy)}: lets {pod_name} reach PostgreSQL/Redis")
    return problems


def check_karpenter(docs: list[dict]) -> list[str]:
    pools = [d for d in docs if d.get("kind") == "NodePool"]
    problems = [] if pools else ["no Karpenter NodePool"]
    for pool in pools:
        if pool.get("apiVersion") != "karpenter.sh/v1":
            problems.append(f"{_name(pool)}: apiVersion {pool.get('apiVersion')}, not karpenter.sh/v1")
        spec = pool["spec"]
        families = set()
        for req in spec["template"]["spec"].get("requirements", []):
            if req["key"] == "karpenter.k8s.aws/instance-family" and req["operator"] == "In":
                families |= set(req["values"])
        if "p5" not in families or not families & {"g5", "g6"}:
            problems.append(f"{_name(pool)}: instance families {sorted(families)} lack p5 or g5/g6")
        if not spec.get("disruption", {}).get("consolidationPolicy"):
            problems.append(f"{_name(pool)}: no consolidation")
        if spec["template"]["spec"].get("expireAfter", "Never") == "Never":
            problems.append(f"{_name(pool)}: nodes never expire")
    return problems


def check_all(docs: list[dict]) -> list[str]:
    return [*check_regions(docs), *check_vllm_scale_to_zero(docs), *check_gpu(docs), *check_non_root(docs),
            *check_probes(docs), *check_no_secret_literals(docs), *check_prewarm(docs), *check_single_beat(docs),
            *check_network(docs), *check_karpenter(docs)]


# --- compose and Dockerfile ------------------------------------------------------------------------------

def check_compose(compose: dict) -> list[str]:
    problems = []
    services = compose.get("services", {})
    vllm, simulator = services.get("vllm"), services.get("simulator")
    if not vllm or "gpu" not in vllm.get("profiles", []):
        problems.append("compose: no vllm service in the gpu profile")
    else:
        command = " ".join(vllm.get("command", []))
        for flag in MISTRAL_FLAGS:
            if f"{flag} mistral" not in command:
                problems.append(f"compose: vllm lacks {flag} mistral")
        for flag in ("--enable-auto-tool-choice", "--enable-prefix-caching"):
            if flag not in command:
                problems.append(f"compose: vllm lacks {flag}")
        if not vllm.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices"):
            problems.append("compose: vllm reserves no GPU")
    if not simulator or "simulator" not in simulator.get("profiles", []):
        problems.append("compose: no simulator service in the simulator profile")
    elif "python -m inference.simulator" not in " ".join(simulator.get("command", [])):
        problems.append("compose: the simulator service doesn't run python -m inference.simulator")
    for name, service in services.items():
        if str(service.get("image", "")).startswith("wattle") or "build" in service:
            user = str(service.get("user", ""))
            if not user or user.split(":")[0] in ("0", "root"):
                problems.append(f"compose: {name} runs as root")
        environment = service.get("environment") or {}
        for key, value in (environment.items() if isinstance(environment, dict) else ()):
            if SECRET_NAME_RE.search(key) and not key.endswith("_FILE") and value:
                problems.append(f"compose: {name} sets {key} literally")
    for path, text in _strings(compose):
        if SECRET_VALUE_RE.search(text):
            problems.append(f"compose{path}: a credential-shaped literal")
    return problems + check_regions([compose])


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    out, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        line, pending = pending + line, ""
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


PINNED_IMAGE_RE = re.compile(r"^[\w./-]+(:\d+(\.\d+){1,2}[\w.-]*)?(@sha256:[0-9a-f]{64})?$")


def check_dockerfile(text: str) -> list[str]:
    """Base images pinned (an exact version or a digest), the final stage runs as a non-root user, has a
    HEALTHCHECK on /healthz and collects static files at build time; no secret in ENV or ARG."""
    instructions = dockerfile_instructions(text)
    problems = []
    args = {}
    for instruction, value in instructions:
        if instruction == "ARG" and "=" in value:
            key, _, default = value.partition("=")
            args[key] = default
    stages = [n for n, (instruction, _v) in enumerate(instructions) if instruction == "FROM"]
    if not stages:
        return ["Dockerfile: no FROM"]
    stage_names = set()
    for n in stages:
        parts = instructions[n][1].split()
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), parts[0])
        if len(parts) >= 3 and parts[1].upper() == "AS":
            stage_names.add(parts[2])
        if image in stage_names:
            continue
        has_version = re.search(r":\d+\.\d+\.\d+", image) is not None
        if not (("@sha256:" in image or has_version) and PINNED_IMAGE_RE.match(image)):
            problems.append(f"Dockerfile: base image {image} is not pinned to a version or digest")
    final = instructions[stages[-1]:]
    users = [v for i, v in final if i == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("Dockerfile: the final stage runs as root (no non-root USER)")
    healthchecks = [v for i, v in final if i == "HEALTHCHECK"]
    if not healthchecks or "/healthz" not in healthchecks[-1]:
        problems.append("Dockerfile: no HEALTHCHECK on /healthz")
    if not any(i == "RUN" and "collectstatic" in v for i, v in final):
        problems.append("Dockerfile: static files are not collected at build time")
    for instruction, value in instructions:
        if instruction in ("ENV", "ARG") and SECRET_NAME_RE.search(value.split("=")[0]):
            problems.append(f"Dockerfile: {instruction} {value.split('=')[0]} looks like a secret")
        if instruction == "ADD" and re.search(r"https?://", value):
            problems.append("Dockerfile: ADD from a URL is not reproducible")
    return problems


def main() -> int:
    docs = render(OVERLAY)
    problems = schema_errors(docs) + check_all(docs)
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    problems += compose_schema_errors(compose) + check_compose(compose)
    problems += check_dockerfile((DEPLOY / "Dockerfile").read_text(encoding="utf-8"))
    for path in sorted((DEPLOY / "iam").glob("*.json")):
        problems += check_regions([json.loads(path.read_text(encoding="utf-8"))])
    for problem in problems:
        print(problem)
    print(f"{len(docs)} manifests, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
