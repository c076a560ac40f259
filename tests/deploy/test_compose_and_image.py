"""deploy/compose.yaml against the compose-spec schema and its invariants; deploy/Dockerfile read by a
parser-level lint (no image is built: there is no registry to pull a base from offline)."""

from __future__ import annotations

import copy
import shlex
import subprocess
import sys

import pytest
import yaml

from deploy import checks
from inference.simulator.config import config_from_args
from inference.tokens import _MODEL_TOKENIZERS

COMPOSE = checks.DEPLOY / "compose.yaml"
DOCKERFILE = checks.DEPLOY / "Dockerfile"


@pytest.fixture
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def test_compose_passes_the_compose_spec(compose):
    assert checks.compose_schema_errors(compose) == []
    # check-jsonschema's own command line, as CI or a pre-commit hook would run it.
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                             str(COMPOSE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_refuses_a_broken_file(compose):
    compose["services"]["web"]["ports"] = "8000"
    compose["services"]["worker"]["restart"] = {"always": True}
    problems = checks.compose_schema_errors(compose)
    assert any("web" in p for p in problems) and any("worker" in p for p in problems)


def test_compose_invariants_hold(compose):
    assert checks.check_compose(compose) == []


def test_compose_runs_every_role_from_one_image(compose):
    services = compose["services"]
    images = {services[name]["image"] for name in ("web", "worker", "beat", "usage-ingest", "migrate", "simulator")}
    assert images == {"${WATTLE_IMAGE:-wattle:local}"}
    assert services["worker"]["command"][:4] == ["celery", "-A", "portal", "worker"]
    assert services["beat"]["command"][:4] == ["celery", "-A", "portal", "beat"]
    assert services["usage-ingest"]["command"] == ["python", "manage.py", "ingest_usage"]
    assert services["web"]["command"][:2] == ["uvicorn", "portal.asgi:application"]
    for name in ("web", "worker", "beat", "usage-ingest"):
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}


def test_simulator_profile_runs_the_real_simulator_command(compose):
    """The simulator's flags parse with the simulator's own parser, and serve names the portal knows."""
    script = compose["services"]["simulator"]["command"][-1]
    argv = shlex.split(script.split("exec ", 1)[1])
    assert argv[:3] == ["python", "-m", "inference.simulator"]
    config = config_from_args(argv[3:], environ={})
    known = {needle for needle, _version in _MODEL_TOKENIZERS}
    for name in config.served_model_names:
        assert name.split("/")[-1].lower() in known
    assert config.host == "0.0.0.0" and config.port == 8000  # noqa: S104 (inside its container)


def test_vllm_serves_a_model_the_portal_knows(compose):
    model = compose["services"]["vllm"]["environment"]["VLLM_MODEL"]
    assert model == "${VLLM_MODEL:-mistralai/Mistral-7B-Instruct-v0.3}"
    assert "mistral-7b-instruct-v0.3" in {needle for needle, _v in _MODEL_TOKENIZERS}


@pytest.mark.parametrize(("breakage", "expected"), [
    (lambda c: c["services"]["vllm"]["command"].__setitem__(0, c["services"]["vllm"]["command"][0].replace(
        "--tokenizer-mode mistral", "")), "--tokenizer-mode mistral"),
    (lambda c: c["services"]["vllm"]["command"].__setitem__(0, c["services"]["vllm"]["command"][0].replace(
        "--enable-prefix-caching", "")), "--enable-prefix-caching"),
    (lambda c: c["services"]["vllm"].pop("deploy"), "reserves no GPU"),
    (lambda c: c["services"]["vllm"].update(profiles=[]), "gpu profile"),
    (lambda c: c["services"].pop("simulator"), "simulator profile"),
    (lambda c: c["services"]["worker"].update(user="0:0"), "worker runs as root"),
    (lambda c: c["services"]["web"]["environment"].update(SECRET_KEY="hunter2"), "sets SECRET_KEY literally"),
    (lambda c: c["services"]["web"]["environment"].update(REDIS_URL="redis://:pw@redis:6379/0"), "credential"),
    (lambda c: c["services"]["web"]["environment"].update(AWS_REGION="us-east-1"), "us-east-1"),
])
def test_compose_invariants_notice_breakage(compose, breakage, expected):
    broken = copy.deepcopy(compose)
    breakage(broken)
    problems = checks.check_compose(broken)
    assert problems and expected in " ".join(problems)


def test_compose_secrets_are_files(compose):
    assert all(set(secret) == {"file"} for secret in compose["secrets"].values())
    assert (checks.DEPLOY / ".gitignore").read_text(encoding="utf-8").split() == ["secrets/"]


# --- Dockerfile ------------------------------------------------------------------------------------------

@pytest.fixture
def dockerfile() -> str:
    return DOCKERFILE.read_text(encoding="utf-8")


def test_dockerfile_invariants_hold(dockerfile):
    assert checks.check_dockerfile(dockerfile) == []


def test_dockerfile_parser_joins_continuations():
    instructions = checks.dockerfile_instructions("FROM a:1.2.3\n# note\nRUN one \\\n    two \\\n# inside\n  three\n")
    assert instructions == [("FROM", "a:1.2.3"), ("RUN", "one two three")]


def test_dockerfile_runs_as_the_uid_the_manifests_use(dockerfile):
    users = [v for i, v in checks.dockerfile_instructions(dockerfile) if i == "USER"]
    assert users[-1] == "10001:10001"
    web = next(d for d in checks.render(checks.OVERLAY) if d["metadata"]["name"] == "wattle-web"
               and d["kind"] == "Deployment")
    assert web["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm", "ARG PYTHON_IMAGE=python:3.11-slim", "not pinned"),
    ("ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm", "ARG PYTHON_IMAGE=python:latest", "not pinned"),
    ("USER 10001:10001", "USER root", "runs as root"),
    ("USER 10001:10001", "", "runs as root"),
    ("HEALTHCHECK", "# HEALTHCHECK", "no HEALTHCHECK"),
    ("collectstatic", "check", "static files"),
    ("ENV PATH=/opt/venv/bin:$PATH", "ENV SECRET_KEY=abc PATH=/opt/venv/bin:$PATH", "looks like a secret"),
])
def test_dockerfile_lint_notices_breakage(dockerfile, old, new, expected):
    assert old in dockerfile
    problems = checks.check_dockerfile(dockerfile.replace(old, new))
    assert problems and expected in " ".join(problems)


def test_a_digest_pins_a_base_image():
    text = "FROM python@sha256:" + "a" * 64 + "\nUSER 1000\nHEALTHCHECK CMD curl /healthz\nRUN collectstatic\n"
    assert checks.check_dockerfile(text) == []


def test_every_role_runs_from_the_image_and_the_image_serves_web_by_default(dockerfile):
    cmd = next(v for i, v in checks.dockerfile_instructions(dockerfile) if i == "CMD")
    assert '"uvicorn", "portal.asgi:application"' in cmd and '"--no-proxy-headers"' in cmd
