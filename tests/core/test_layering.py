"""The layering contracts (``[tool.importlinter]`` in pyproject.toml) hold, and a contract broken on purpose
fails the check: ``make test`` runs the same ``lint-imports``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "portal", "tenants", "billing", "inference", "audit")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(project: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=project, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(project), "PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def project_copy(tmp_path_factory) -> Path:
    """The project's packages and contracts, copied so that one can be broken without touching the tree."""
    copy = tmp_path_factory.mktemp("layering")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    return copy


def test_the_contracts_hold():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("core/quotas.py", "import billing.models", "core is Django-free"),
    ("core/quotas.py", "import django.conf", "core is Django-free"),
    ("inference/gateway/errors.py", "from tenants import models", "the data plane imports neither"),
    ("inference/gateway/errors.py", "import inference.models", "the data plane imports neither"),
    ("billing/limits.py", "from inference.gateway import limits", "the control plane's apps don't import"),
    ("tenants/keys.py", "import billing.snapshot", "tenants imports nothing from billing"),
    ("audit/services.py", "import portal.celery", "no app imports portal"),
])
def test_a_contract_broken_on_purpose_fails_the_check(project_copy, module, line, contract):
    target = project_copy / module
    original = target.read_text()
    target.write_text(f"{line}  # broken on purpose\n{original}")
    try:
        result = _lint(project_copy)
    finally:
        target.write_text(original)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts")[-1]
    assert contract in broken, result.stdout
