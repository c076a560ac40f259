"""The web pod's readiness probe: ``python /app/deploy/readiness.py`` (an exec probe).

``/readyz`` answers 503 unless at least one inference backend is up. With every vLLM model scaled to zero that
is the normal state at night, and a readiness probe on the bare status would take every web pod out of its
Service: the console would go dark and no request could reach the gateway to raise
``wattle_pending_requests``, so KEDA would never scale a model back up. The probe therefore reads /readyz's
details (loopback is an internal caller) and requires only what a web pod itself needs: the database and
Redis. Requests that find no replica are held by the gateway during the cold start.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

URL = "http://127.0.0.1:8000/readyz"


def ready(status: int, body: bytes) -> bool:
    """True when this pod can serve: /readyz said so, or it said no only because no backend is up."""
    if status == 200:
        return True
    try:
        checks = json.loads(body).get("checks", {})
    except (ValueError, AttributeError):
        return False
    return checks.get("database") == "ok" and checks.get("redis") == "ok"


def main() -> int:
    try:
        with urllib.request.urlopen(URL, timeout=3) as response:
            status, body = response.status, response.read(65536)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(65536)
    except OSError:
        return 1
    return 0 if ready(status, body) else 1


if __name__ == "__main__":
    sys.exit(main())
