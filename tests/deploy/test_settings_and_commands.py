"""The manifests and compose file set settings the code reads, under their real names, and run commands that
exist: a misspelt variable would be ignored without a word."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml

from deploy import checks

APP_DIRS = ("portal", "core", "inference", "billing", "tenants", "audit")


def names_the_code_reads() -> set[str]:
    names = set()
    for directory in APP_DIRS:
        for path in (checks.ROOT / directory).rglob("*.py"):
            names.update(re.findall(r'"([A-Z][A-Z0-9_]{2,})"', path.read_text(encoding="utf-8")))
    return names


def is_read(name: str, known: set[str]) -> bool:
    return name in known or (name.endswith("_FILE") and name[: -len("_FILE")] in known)


@pytest.fixture(scope="module")
def rendered():
    return checks.render(checks.OVERLAY)


@pytest.fixture(scope="module")
def known() -> set[str]:
    return names_the_code_reads()


def manifest_settings(docs) -> set[str]:
    names = set(next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "wattle-config")["data"])
    app_secret = next(d for d in docs if d["kind"] == "ExternalSecret" and d["metadata"]["name"] == "wattle-app")
    names |= {item["secretKey"] for item in app_secret["spec"]["data"]}
    return names


def test_every_setting_in_the_manifests_is_read_by_the_code(rendered, known):
    names = manifest_settings(rendered)
    assert {"SECRET_KEY", "DATABASE_URL", "REDIS_URL", "API_KEY_PEPPER", "INFERENCE_BACKENDS"} <= names
    assert sorted(n for n in names if not is_read(n, known)) == []


def test_every_setting_in_compose_is_read_by_the_code(known):
    compose = yaml.safe_load((checks.DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    for name in ("web", "worker", "beat", "usage-ingest", "migrate"):
        environment = compose["services"][name]["environment"]
        assert sorted(n for n in environment if not is_read(n, known)) == [], name


def test_a_misspelt_setting_is_caught(known):
    assert not is_read("INFERENCE_BACKEND", known)
    assert not is_read("SECRETKEY_FILE", known)
    assert is_read("SECRET_KEY_FILE", known) and is_read("PROMETHEUS_MULTIPROC_DIR", known)


def app_commands(docs) -> list[list[str]]:
    out = []
    for doc in docs:
        for container in checks.containers(doc, init=False):
            if container["image"].split("/")[-1].startswith("wattle"):
                command = container["command"]
                out.append(shlex.split(command[-1]) if command[:2] == ["sh", "-c"] else command)
    return out


def test_app_commands_are_real(rendered):
    commands = app_commands(rendered)
    celery_apps = {c[2] for c in commands if c[0] == "celery"}
    assert celery_apps == {"portal"}
    assert "app = Celery(" in (checks.ROOT / "portal" / "celery.py").read_text(encoding="utf-8")
    roles = {c[3] for c in commands if c[0] == "celery"}
    assert roles == {"worker", "beat"}
    for command in commands:
        words = [w for w in command if w not in ("&&",)]
        for n, word in enumerate(words):
            if word == "manage.py":
                management = words[n + 1]
                found = list(checks.ROOT.glob(f"*/management/commands/{management}.py"))
                assert found or management in {"migrate", "check", "collectstatic"}, management
    web = next(c for c in commands if c[0] == "uvicorn")
    assert web[1] == "portal.asgi:application"
    assert "application" in (checks.ROOT / "portal" / "asgi.py").read_text(encoding="utf-8")
    assert "--no-proxy-headers" in web  # TRUSTED_PROXIES decides, not uvicorn (docs/operations.md)


def test_make_vllm_uses_the_mistral_flags_and_a_known_name():
    makefile = (checks.ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = makefile.split("\nvllm:", 1)[1].split("\n\n", 1)[0]
    for flag in ("--tokenizer-mode mistral", "--config-format mistral", "--load-format mistral",
                 "--tool-call-parser mistral", "--enable-auto-tool-choice", "--enable-prefix-caching",
                 "--served-model-name $(VLLM_MODEL)"):
        assert flag in recipe
    assert "VLLM_MODEL ?= mistralai/Mistral-7B-Instruct-v0.3" in makefile
    assert (checks.ROOT / "requirements-gpu.txt").read_text(encoding="utf-8").count("vllm==0.33.0") == 1
