"""Settings come from the environment, fail loudly on bad values, and are secure by default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from core import env

ROOT = Path(__file__).resolve().parents[2]


def _settings_in_subprocess(environ: dict[str, str], expression: str) -> subprocess.CompletedProcess:
    """Import portal.settings in a clean interpreter with exactly ``environ`` (plus PATH)."""
    code = f"import portal.settings as s; print({expression})"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": os.environ["PATH"], "WATTLE_VAR_DIR": str(ROOT / "var" / "test"), **environ},
    )


def test_secret_key_is_required_when_debug_is_off():
    result = _settings_in_subprocess({"DEBUG": "false"}, "s.SECRET_KEY")
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr and "ImproperlyConfigured" in result.stderr


def test_secret_key_can_come_from_a_file(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file-0123456789\n")
    result = _settings_in_subprocess({"SECRET_KEY_FILE": str(secret_file)}, "s.SECRET_KEY")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "from-a-file-0123456789"


def test_embedded_default_uses_sqlite_and_in_process_stand_ins():
    result = _settings_in_subprocess(
        {"DEBUG": "true"},
        "s.DATABASES['default']['ENGINE'], s.REDIS_URL, s.CHANNEL_LAYERS['default']['BACKEND'], "
        "s.CELERY_TASK_ALWAYS_EAGER, s.AWS_REGION",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "django.db.backends.sqlite3 None channels.layers.InMemoryChannelLayer True ap-southeast-2"
    )


def test_real_services_are_used_when_urls_are_set():
    result = _settings_in_subprocess(
        {"DEBUG": "true", "DATABASE_URL": "postgres://u@db.internal:5432/wattle", "REDIS_URL": "redis://r:6379/0"},
        "s.DATABASES['default']['ENGINE'], s.CHANNEL_LAYERS['default']['BACKEND'], s.CELERY_BROKER_URL, "
        "s.CELERY_TASK_ALWAYS_EAGER",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "django.db.backends.postgresql", "channels_redis.core.RedisChannelLayer", "redis://r:6379/0", "False"
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("http://a:8000", [("backend-1", "http://a:8000")]),
        ("gpu1=http://a:8000/,gpu2=https://b", [("gpu1", "http://a:8000"), ("gpu2", "https://b")]),
        ('[{"name": "x", "url": "http://x:1", "region": "ap-southeast-4"}]', [("x", "http://x:1")]),
    ],
)
def test_inference_backends_formats(raw, expected):
    from portal.settings import _parse_backends

    parsed = _parse_backends(raw, "http://default")
    assert [(b["name"], b["url"]) for b in parsed] == expected


@pytest.mark.parametrize("raw", ["ftp://nope", "[{not json", '[{"name": "no-url"}]'])
def test_inference_backends_rejects_bad_values(raw):
    from portal.settings import _parse_backends

    with pytest.raises(ImproperlyConfigured):
        _parse_backends(raw, "http://default")


def test_env_helpers_fail_loudly(monkeypatch):
    monkeypatch.setenv("X_BOOL", "maybe")
    monkeypatch.setenv("X_INT", "ten")
    with pytest.raises(env.ImproperlyConfigured, match="X_BOOL"):
        env.env_bool("X_BOOL")
    with pytest.raises(env.ImproperlyConfigured, match="X_INT"):
        env.env_int("X_INT", 1)
    monkeypatch.setenv("X_LIST", "a, b,,c")
    assert env.env_list("X_LIST") == ["a", "b", "c"]


def test_check_deploy_passes_with_a_production_environment():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={
            "PATH": os.environ["PATH"],
            "WATTLE_VAR_DIR": str(ROOT / "var" / "test"),
            "DEBUG": "false",
            "SECRET_KEY": "a-long-production-secret-key-with-enough-entropy-0123456789-abcdefghij",
            "API_KEY_PEPPER": "a-separate-pepper-0123456789",
            "ALLOWED_HOSTS": "api.wattle.example",
            "DATABASE_URL": "postgres://wattle@127.0.0.1:5432/wattle",
            "REDIS_URL": "redis://127.0.0.1:6379/0",
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_deploy_refuses_a_backend_outside_australia():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={
            "PATH": os.environ["PATH"],
            "WATTLE_VAR_DIR": str(ROOT / "var" / "test"),
            "DEBUG": "false",
            "SECRET_KEY": "a-long-production-secret-key-with-enough-entropy-0123456789-abcdefghij",
            "ALLOWED_HOSTS": "api.wattle.example",
            "INFERENCE_BACKENDS": '[{"name": "us", "url": "http://us:8000", "region": "us-east-1"}]',
        },
    )
    assert result.returncode != 0
    assert "wattle.E001" in result.stdout + result.stderr


def test_a_renamed_setting_is_still_read_under_its_old_name_and_the_new_one_wins():
    old = _settings_in_subprocess({"DEBUG": "true", "COST_GUARD_THROTTLE_RPM": "7"},
                                  "s.BILLING_COST_GUARD_THROTTLE_RPM")
    assert old.returncode == 0, old.stderr
    assert old.stdout.strip() == "7"
    both = _settings_in_subprocess(
        {"DEBUG": "true", "COST_GUARD_THROTTLE_RPM": "7", "BILLING_COST_GUARD_THROTTLE_RPM": "9"},
        "s.BILLING_COST_GUARD_THROTTLE_RPM",
    )
    assert both.stdout.strip() == "9"
    bad = _settings_in_subprocess({"DEBUG": "true", "COST_GUARD_ACTION": "explode"}, "s.BILLING_COST_GUARD_ACTION")
    assert bad.returncode != 0 and "BILLING_COST_GUARD_ACTION" in bad.stderr
