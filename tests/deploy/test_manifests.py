"""The Kubernetes manifests: they render (kustomize's way, offline), pass the API's and the operators' schemas,
and hold the invariants; each invariant's check is shown to notice when it is broken on purpose."""

from __future__ import annotations

import copy
import json

import pytest

from deploy import checks


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return checks.render(checks.OVERLAY)


@pytest.fixture
def docs(rendered) -> list[dict]:
    """A copy to break."""
    return copy.deepcopy(rendered)


def find(docs, kind, name):
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def container(doc, name=None):
    spec = next(checks.pod_specs(doc))
    return next(c for c in spec["containers"] if name is None or c["name"] == name)


# --- rendering and schemas -------------------------------------------------------------------------------

def test_overlay_renders_every_role(rendered):
    kinds = {(d["kind"], d["metadata"]["name"]) for d in rendered}
    for expected in [("Deployment", "wattle-web"), ("HorizontalPodAutoscaler", "wattle-web"),
                     ("PodDisruptionBudget", "wattle-web"), ("Deployment", "wattle-worker"),
                     ("ScaledObject", "wattle-worker"), ("Deployment", "wattle-beat"),
                     ("Deployment", "wattle-usage-ingest"), ("Deployment", "vllm-mistral-7b"),
                     ("Deployment", "vllm-mistral-large"), ("ScaledObject", "vllm-mistral-7b"),
                     ("ScaledObject", "vllm-mistral-large"), ("CronJob", "vllm-prewarm-mistral-7b"),
                     ("NodePool", "gpu"), ("EC2NodeClass", "gpu"), ("ExternalSecret", "wattle-app")]:
        assert expected in kinds
    assert len(kinds) == len(rendered), "two resources share a kind and name"


def test_overlay_applies_namespace_image_patches_and_labels(rendered):
    web = find(rendered, "Deployment", "wattle-web")
    assert web["metadata"]["namespace"] == "wattle"
    assert web["metadata"]["labels"]["wattle.io/region"] == "ap-southeast-2"
    assert container(web)["image"] == "111122223333.dkr.ecr.ap-southeast-2.amazonaws.com/wattle:2026.12.0"
    assert "namespace" not in find(rendered, "NodePool", "gpu")["metadata"]  # cluster-scoped
    app_sa = find(rendered, "ServiceAccount", "wattle-app")
    assert app_sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(":role/wattle-syd-app")
    config = find(rendered, "ConfigMap", "wattle-config")["data"]
    assert config["AUDIT_ARCHIVE_BUCKET"] == "wattle-syd-audit-archive"
    assert config["AWS_REGION"] == "ap-southeast-2"  # the base's value survives the patch's merge
    # vLLM keeps its own image (the overlay's image rule renames only ours).
    assert container(find(rendered, "Deployment", "vllm-mistral-7b"))["image"] == "vllm/vllm-openai:v0.33.0"


def test_a_patch_without_a_target_is_an_error(tmp_path):
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: ['{checks.BASE}']\npatches: [{{path: p.yaml}}]\n", encoding="utf-8")
    (tmp_path / "p.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: nope}\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no ConfigMap/nope"):
        checks.render(tmp_path)


def test_base_and_overlay_pass_the_schemas():
    assert checks.schema_errors(checks.render(checks.BASE)) == []
    assert checks.schema_errors(checks.render(checks.OVERLAY)) == []


def test_every_custom_resource_has_a_vendored_schema(rendered):
    core = ("v1", "apps/v1", "batch/v1", "autoscaling/v2", "policy/v1", "networking.k8s.io/v1")
    for doc in rendered:
        if doc["apiVersion"] not in core:
            assert (doc["apiVersion"], doc["kind"]) in checks.CRD_SCHEMAS


@pytest.mark.parametrize(("kind", "name", "breakage", "expected"), [
    ("Deployment", "wattle-web", lambda d: container(d)["ports"][0].update(containerPort="eighty"), "eighty"),
    ("Deployment", "wattle-web", lambda d: container(d).update(livenessProbes={}), "livenessProbes"),
    ("HorizontalPodAutoscaler", "wattle-web", lambda d: d["spec"].update(minReplicas="three"), "three"),
    ("CronJob", "vllm-prewarm-mistral-7b", lambda d: d["spec"].update(timezone="Australia/Sydney"), "timezone"),
    ("ScaledObject", "vllm-mistral-7b", lambda d: d["spec"].update(minReplicaCount="0"), "minReplicaCount"),
    ("ScaledObject", "vllm-mistral-7b", lambda d: d["spec"]["triggers"][0].pop("metadata"), "metadata"),
    ("ScaledObject", "vllm-mistral-7b", lambda d: d["spec"].update(cooldown=300), "cooldown"),
    ("NodePool", "gpu", lambda d: d["spec"]["disruption"].update(consolidationPolicy="Always"), "Always"),
    ("NodePool", "gpu", lambda d: d["spec"]["template"]["spec"].update(expireAfter="30 days"), "30 days"),
    ("NodePool", "gpu", lambda d: d["spec"]["template"]["spec"]["nodeClassRef"].pop("group"), "group"),
    ("NodePool", "gpu", lambda d: d["spec"]["disruption"]["budgets"][1].pop("duration"), "duration"),
    ("NodePool", "gpu", lambda d: d["spec"]["disruption"].pop("consolidateAfter"), "consolidateAfter"),
    ("NodePool", "gpu", lambda d: d["spec"]["limits"].update({"nvidia.com/gpu": "lots"}), "lots"),
    ("NodePool", "gpu", lambda d: d["spec"]["template"]["spec"]["requirements"].append(
        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["a"]}), "kubernetes.io/hostname"),
    ("EC2NodeClass", "gpu", lambda d: d["spec"].pop("amiSelectorTerms"), "amiSelectorTerms"),
    ("EC2NodeClass", "gpu", lambda d: d["spec"]["metadataOptions"].update(httpTokens="maybe"), "maybe"),
    ("ExternalSecret", "wattle-app", lambda d: d["spec"]["data"][0].pop("remoteRef"), "remoteRef"),
    ("SecretStore", "aws-secrets-manager", lambda d: d["spec"]["provider"]["aws"].pop("region"), "region"),
])
def test_schemas_refuse_broken_resources(docs, kind, name, breakage, expected):
    doc = find(docs, kind, name)
    breakage(doc)
    problems = checks.schema_errors([doc])
    assert problems and expected in " ".join(problems)


# --- invariants: hold now, and each is noticed when broken ----------------------------------------------

def test_all_invariants_hold(rendered):
    assert checks.check_all(rendered) == []
    assert checks.check_all(checks.render(checks.BASE)) == []


def test_regions_are_australian(docs):
    assert checks.check_regions(docs) == []
    find(docs, "SecretStore", "aws-secrets-manager")["spec"]["provider"]["aws"]["region"] = "us-east-1"
    find(docs, "NodePool", "gpu")["spec"]["template"]["spec"]["requirements"][4]["values"].append("us-west-2a")
    find(docs, "ConfigMap", "wattle-config")["data"]["AUDIT_ARCHIVE_KMS_KEY_ID"] = (
        "arn:aws:kms:eu-west-1:111122223333:alias/wattle")
    problems = checks.check_regions(docs)
    assert any("us-east-1" in p and "SecretStore" in p for p in problems)
    assert any("us-west-2" in p and "NodePool" in p for p in problems)
    assert any("eu-west-1" in p for p in problems)


def test_melbourne_is_an_australian_region():
    assert checks.check_regions([{"kind": "ConfigMap", "data": {"AWS_REGION": "ap-southeast-4"}}]) == []
    assert checks.check_regions([{"kind": "ConfigMap", "data": {"AWS_REGION": "ap-southeast-1"}}])  # Singapore


@pytest.mark.parametrize(("breakage", "expected"), [
    (lambda so: so["spec"].update(minReplicaCount=1), "minReplicaCount is 1"),
    (lambda so: so["spec"].pop("minReplicaCount"), "minReplicaCount is None"),
    (lambda so: so["spec"].update(cooldownPeriod=600), "cooldownPeriod is 600"),
    (lambda so: so["spec"]["triggers"].pop(0), "wattle_pending_requests"),
    (lambda so: so["spec"]["triggers"][1]["metadata"].update(query="sum(rate(wattle_requests_total[2m]))"),
     "wattle_requests_total"),
])
def test_every_model_scales_to_zero(docs, breakage, expected):
    breakage(find(docs, "ScaledObject", "vllm-mistral-large"))
    problems = checks.check_vllm_scale_to_zero(docs)
    assert len(problems) == 1 and "vllm-mistral-large" in problems[0] and expected in problems[0]


def test_a_model_without_a_scaledobject_is_reported(docs):
    docs.remove(find(docs, "ScaledObject", "vllm-mistral-7b"))
    assert checks.check_vllm_scale_to_zero(docs) == ["vllm-mistral-7b: no KEDA ScaledObject"]


def test_scaledobject_queries_name_the_served_model(rendered):
    for model, served in (("mistral-7b", "mistralai/Mistral-7B-Instruct-v0.3"),
                          ("mistral-large", "mistralai/Mistral-Large-Instruct-2411")):
        queries = [t["metadata"]["query"] for t in find(rendered, "ScaledObject", f"vllm-{model}")["spec"]["triggers"]]
        assert any(f'wattle_pending_requests{{model="{served}"}}' in q for q in queries)


@pytest.mark.parametrize(("breakage", "expected"), [
    (lambda c, pod: c["resources"]["requests"].pop("nvidia.com/gpu"), "requests nvidia.com/gpu is missing"),
    (lambda c, pod: c["resources"]["limits"].update({"nvidia.com/gpu": "4"}), "limits nvidia.com/gpu is 4"),
    (lambda c, pod: pod.update(tolerations=[]), "toleration"),
    (lambda c, pod: c["args"].remove("--load-format=mistral"), "--load-format is not mistral"),
    (lambda c, pod: c["args"].remove("--enable-prefix-caching"), "prefix caching"),
])
def test_gpu_requests_match_tensor_parallel(docs, breakage, expected):
    deployment = find(docs, "Deployment", "vllm-mistral-large")
    breakage(container(deployment), deployment["spec"]["template"]["spec"])
    problems = checks.check_gpu(docs)
    assert len(problems) == 1 and expected in problems[0]


def test_large_model_is_tensor_parallel_over_a_p5(rendered):
    deployment = find(rendered, "Deployment", "vllm-mistral-large")
    assert checks._vllm_arg(container(deployment), "--tensor-parallel-size") == "8"
    terms = deployment["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0]["values"] == ["p5"]


@pytest.mark.parametrize(("kind", "name", "breakage", "expected"), [
    ("Deployment", "wattle-web", lambda d: d["spec"]["template"]["spec"]["securityContext"].update(runAsNonRoot=False),
     "runAsNonRoot"),
    ("Deployment", "wattle-worker", lambda d: container(d)["securityContext"].update(runAsUser=0), "runAsUser is 0"),
    ("Deployment", "vllm-mistral-7b",
     lambda d: d["spec"]["template"]["spec"]["initContainers"][0]["securityContext"].update(
         allowPrivilegeEscalation=True), "allowPrivilegeEscalation"),
    ("CronJob", "vllm-prewarm-mistral-large",
     lambda d: container(d)["securityContext"]["capabilities"].update(drop=[]), "capabilities"),
    ("CronJob", "wattle-migrate",
     lambda d: d["spec"]["jobTemplate"]["spec"]["template"]["spec"].pop("securityContext"), "runAsNonRoot"),
    ("Deployment", "wattle-beat",
     lambda d: d["spec"]["template"]["spec"]["securityContext"].pop("seccompProfile"), "seccomp"),
    ("Deployment", "vllm-mistral-large", lambda d: d["spec"]["template"]["spec"].update(hostNetwork=True),
     "hostNetwork"),
    ("Deployment", "vllm-mistral-large", lambda d: d["spec"]["template"]["spec"]["volumes"].append(
        {"name": "nvme", "hostPath": {"path": "/mnt/nvme"}}), "hostPath volume nvme"),
])
def test_non_root_everywhere(docs, kind, name, breakage, expected):
    breakage(find(docs, kind, name))
    problems = checks.check_non_root(docs)
    assert problems and all(name in p for p in problems) and expected in problems[0]


@pytest.mark.parametrize(("name", "breakage", "expected"), [
    ("wattle-web", lambda c: c.pop("readinessProbe"), "no readinessProbe"),
    ("wattle-web", lambda c: c.update(readinessProbe={"httpGet": {"path": "/healthz", "port": "http"}}),
     "readiness is not /readyz"),
    ("wattle-web", lambda c: c["livenessProbe"]["httpGet"].update(path="/readyz"), "liveness is not /healthz"),
    ("vllm-mistral-7b", lambda c: c["readinessProbe"]["httpGet"].update(path="/v1/models"), "vLLM's /health"),
    ("wattle-usage-ingest", lambda c: c.pop("livenessProbe"), "no livenessProbe"),
])
def test_probes_set(docs, name, breakage, expected):
    breakage(container(find(docs, "Deployment", name)))
    problems = checks.check_probes(docs)
    assert len(problems) == 1 and name in problems[0] and expected in problems[0]


def test_web_shuts_down_gracefully(rendered):
    web = find(rendered, "Deployment", "wattle-web")
    pod = web["spec"]["template"]["spec"]
    command = container(web)["command"]
    graceful = int(command[command.index("--timeout-graceful-shutdown") + 1])
    pause = container(web)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > graceful + pause
    assert web["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize(("breakage", "expected"), [
    (lambda d: d.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"},
                         "stringData": {"SECRET_KEY": "hunter2"}}), "Secret with literal values"),
    (lambda d: find(d, "ConfigMap", "wattle-config")["data"].update(STRIPE_SECRET_KEY="x"), "looks secret"),
    (lambda d: container(find(d, "Deployment", "wattle-web")).setdefault("env", []).append(
        {"name": "API_KEY_PEPPER", "value": "pepper"}), "literal value"),
    (lambda d: find(d, "ConfigMap", "wattle-config")["data"].update(
        DATABASE_URL="postgres://wattle:s3cret@db.example:5432/wattle"), "credential-shaped"),
    (lambda d: find(d, "ConfigMap", "wattle-config")["data"].update(NOTE="sk_live_51Habc"), "credential-shaped"),
])
def test_no_secret_literals(docs, breakage, expected):
    assert checks.check_no_secret_literals(docs) == []
    breakage(docs)
    problems = checks.check_no_secret_literals(docs)
    assert problems and expected in " ".join(problems)


def test_secrets_come_from_external_secrets(rendered):
    web = container(find(rendered, "Deployment", "wattle-web"))
    secret_refs = [e["secretRef"]["name"] for e in web["envFrom"] if "secretRef" in e]
    targets = {d["spec"]["target"]["name"] for d in rendered if d["kind"] == "ExternalSecret"}
    assert secret_refs == ["wattle-app"] and "wattle-app" in targets
    assert not [d for d in rendered if d["kind"] == "Secret"]


@pytest.mark.parametrize(("breakage", "expected"), [
    (lambda s: s.update(schedule="0 7 *"), "has 3 fields"),
    (lambda s: s.update(schedule="0 25 * * 1-5"), "bad hour"),
    (lambda s: s.update(schedule="0 7 * * 1-8"), "bad day of week"),
    (lambda s: s.update(schedule="0 7 * * *"), "not Monday to Friday"),
    (lambda s: s.update(schedule="30 6 * * 1-5"), "not 07:00"),
    (lambda s: s.pop("timeZone"), "timeZone is None"),
    (lambda s: s.update(timeZone="UTC"), "timeZone is 'UTC'"),
])
def test_prewarm_schedule_valid(docs, breakage, expected):
    breakage(find(docs, "CronJob", "vllm-prewarm-mistral-7b")["spec"])
    problems = checks.check_prewarm(docs)
    assert problems and all("vllm-prewarm-mistral-7b" in p for p in problems) and expected in " ".join(problems)


def test_prewarm_trigger_is_required(docs):
    so = find(docs, "ScaledObject", "vllm-mistral-7b")
    so["spec"]["triggers"] = [t for t in so["spec"]["triggers"] if t["name"] != "prewarm"]
    assert checks.check_prewarm(docs) == ["vllm-mistral-7b: its ScaledObject ignores vllm-prewarm-mistral-7b"]


def test_prewarm_hold_covers_the_start_of_business(rendered):
    job = find(rendered, "CronJob", "vllm-prewarm-mistral-large")["spec"]["jobTemplate"]["spec"]
    hold_s = int(container({"kind": "Job", "spec": job})["command"][-1].split("sleep(")[1].rstrip(")"))
    assert 3600 < hold_s < job["activeDeadlineSeconds"]  # past 08:00, and it ends by itself


def test_exactly_one_beat(docs):
    assert checks.check_single_beat(docs) == []
    beat = find(docs, "Deployment", "wattle-beat")
    beat["spec"]["replicas"] = 2
    beat["spec"]["strategy"] = {"type": "RollingUpdate"}
    docs.append({"kind": "HorizontalPodAutoscaler", "metadata": {"name": "beat"},
                 "spec": {"scaleTargetRef": {"name": "wattle-beat"}}})
    problems = checks.check_single_beat(docs)
    assert any("replicas 2" in p for p in problems)
    assert any("rolling update" in p for p in problems)
    assert any("scales the beat" in p for p in problems)


def test_workers_scale_on_the_celery_queue(rendered):
    so = find(rendered, "ScaledObject", "wattle-worker")
    trigger = so["spec"]["triggers"][0]
    assert trigger["type"] == "redis" and trigger["metadata"]["listName"] == "celery"
    assert so["spec"]["scaleTargetRef"]["name"] == "wattle-worker"


@pytest.mark.parametrize(("breakage", "expected"), [
    (lambda d: find(d, "NetworkPolicy", "vllm-from-gateway")["spec"]["ingress"][0]["from"].append(
        {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "worker"}}}), "other than the gateway"),
    (lambda d: find(d, "NetworkPolicy", "vllm-from-gateway")["spec"]["ingress"][0]["from"].append(
        {"ipBlock": {"cidr": "0.0.0.0/0"}}), "other than the gateway"),
    (lambda d: find(d, "NetworkPolicy", "vllm-egress")["spec"]["egress"][0]["ports"].append(
        {"protocol": "TCP", "port": 5432}), "reach PostgreSQL/Redis"),
    (lambda d: d.remove(find(d, "NetworkPolicy", "default-deny")), "default-deny"),
])
def test_network_policies(docs, breakage, expected):
    breakage(docs)
    problems = checks.check_network(docs)
    assert problems and expected in " ".join(problems)


def test_only_app_pods_reach_the_databases(rendered):
    policy = find(rendered, "NetworkPolicy", "app-egress")
    assert policy["spec"]["podSelector"] == {"matchLabels": {"wattle.io/tier": "app"}}
    tiers = {name: labels.get("wattle.io/tier") for name, labels in checks._pod_labels(rendered)}
    assert tiers["Deployment/vllm-mistral-7b"] == "model" and tiers["CronJob/vllm-prewarm-mistral-7b"] is None
    assert tiers["Deployment/wattle-web"] == tiers["Deployment/wattle-usage-ingest"] == "app"


@pytest.mark.parametrize(("breakage", "expected"), [
    (lambda p: p.update(apiVersion="karpenter.sh/v1beta1"), "not karpenter.sh/v1"),
    (lambda p: p["spec"]["template"]["spec"]["requirements"][0].update(values=["g6"]), "lack p5"),
    (lambda p: p["spec"]["template"]["spec"]["requirements"][0].update(values=["p5"]), "lack p5 or g5/g6"),
    (lambda p: p["spec"].pop("disruption"), "no consolidation"),
    (lambda p: p["spec"]["template"]["spec"].update(expireAfter="Never"), "never expire"),
])
def test_karpenter_nodepool(docs, breakage, expected):
    breakage(find(docs, "NodePool", "gpu"))
    problems = checks.check_karpenter(docs)
    assert len(problems) == 1 and expected in problems[0]


def test_iam_policies_name_only_sydney_resources():
    for path in sorted((checks.DEPLOY / "iam").glob("*.json")):
        policy = json.loads(path.read_text(encoding="utf-8"))
        assert checks.check_regions([policy]) == [], path.name
        for statement in policy["Statement"]:
            for arn in ([statement["Resource"]] if isinstance(statement.get("Resource"), str)
                        else statement.get("Resource", [])):
                assert arn != "*", path.name
                region = arn.split(":")[3]
                # S3 ARNs carry no region: the statement pins the requested region instead.
                assert region in checks.AU_REGIONS or (
                    region == "" and statement["Condition"]["StringEquals"]["aws:RequestedRegion"] == "ap-southeast-2")
    broken = {"Statement": [{"Resource": "arn:aws:kms:us-east-1:111122223333:key/*"}]}
    assert checks.check_regions([broken])
