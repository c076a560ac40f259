from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _own_audit_archive(settings, tmp_path_factory):
    """Each audit test archives to a folder of its own: ``verify_audit`` reads the newest archived segment, and
    the development folder (``var/audit-archive``) belongs to another database."""
    settings.AUDIT_ARCHIVE_BUCKET = ""
    settings.AUDIT_ARCHIVE_DIR = tmp_path_factory.mktemp("audit-archive")
