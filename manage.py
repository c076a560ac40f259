#!/usr/bin/env python
import os
import sys
from pathlib import Path


def _read_local_env() -> None:
    """Development convenience: a git-ignored ``.env`` beside this file (``make`` writes ``DEBUG=true`` there
    on a developer's machine) supplies defaults for management commands. The environment always wins, and
    the web server (portal.asgi) never reads it."""
    path = Path(__file__).resolve().parent / ".env"
    if not path.is_file():
        return
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            os.environ.setdefault(name.strip(), value.strip())


def main() -> None:
    _read_local_env()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
