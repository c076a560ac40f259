"""`make run`: migrate, bootstrap the demo data, start the vLLM simulator and the portal; Ctrl-C stops both.

With REDIS_URL set it also starts a Celery worker with beat, and the usage ingester, so the real shape runs.
With ``--stripe-stand-in`` (or ``STRIPE_STAND_IN=1 make run``) it also starts the local Stripe stand-in
(``tests/fakes/stripe``), points the real SDK at it with fresh test keys and has it deliver signed webhooks to the
portal, so plans, Checkout, the Portal and invoices work end to end on one machine.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from core.proxies import UVICORN_ARGS


def _wait_for(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 (local URL we built)
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def portal_command(port: int) -> list[str]:
    """The portal's uvicorn command line. Its own forwarded-header handling is off: TRUSTED_PROXIES decides.
    Per-message deflate is off: the playground's frames are a token or two each, and compressing them cost ~6%
    more CPU per chunk and ~60 KB per socket for nothing (bench P6)."""
    return [
        sys.executable, "-m", "uvicorn", "portal.asgi:application", "--host", "127.0.0.1", "--port", str(port),
        "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--ws-per-message-deflate", "false",
        *UVICORN_ARGS,
    ]


class Command(BaseCommand):
    help = "Run the portal with a local vLLM simulator (development)."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--simulator-port", type=int, default=settings.SIMULATOR_PORT)
        parser.add_argument("--no-simulator", action="store_true", help="Use INFERENCE_BACKENDS as they are.")
        parser.add_argument(
            "--stripe-stand-in", action="store_true",
            default=os.environ.get("STRIPE_STAND_IN", "").lower() in ("1", "true", "yes", "on"),
            help="Run the local Stripe stand-in and use it (payments end to end, offline).",
        )
        parser.add_argument("--stripe-port", type=int, default=int(os.environ.get("STRIPE_STAND_IN_PORT", "12111")))

    def handle(self, *args, **options):
        port, sim_port = options["port"], options["simulator_port"]
        procs: list[subprocess.Popen] = []

        def stop(*_):
            for proc in reversed(procs):
                if proc.poll() is None:
                    proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()

        def interrupt(*_):
            raise KeyboardInterrupt

        # Installed explicitly: a shell that starts us in the background leaves SIGINT ignored.
        signal.signal(signal.SIGINT, interrupt)
        signal.signal(signal.SIGTERM, interrupt)
        try:
            stripe_base = ""
            if options["stripe_stand_in"]:
                stripe_base = self._start_stripe_stand_in(procs, options["stripe_port"], port)
                if not stripe_base:
                    return
            call_command("migrate", interactive=False, verbosity=0)
            call_command("collectstatic", interactive=False, verbosity=0)
            out = _Capture()
            call_command("bootstrap_demo", json=True, stdout=out)
            creds = json.loads(out.text)
            if not options["no_simulator"]:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "inference.simulator", "--port", str(sim_port)]
                ))
                if not _wait_for(f"http://127.0.0.1:{sim_port}/health", 60):
                    self.stderr.write(f"The vLLM simulator did not start on port {sim_port}.")
                    return
            if settings.REDIS_URL:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "celery", "-A", "portal", "worker", "-B", "--loglevel", "WARNING",
                     "--concurrency", "2"]
                ))
                procs.append(subprocess.Popen([sys.executable, "manage.py", "ingest_usage"]))
            procs.append(subprocess.Popen(portal_command(port)))
            if not _wait_for(f"http://127.0.0.1:{port}/healthz", 60):
                self.stderr.write(f"The portal did not start on port {port}.")
                return
            base = f"http://127.0.0.1:{port}"
            self.stdout.write(self.style.SUCCESS(f"\nWattle is running at {base}/"))
            self.stdout.write(f"Console login: {base}/accounts/login/")
            self.stdout.write(f"Admin login: {creds['admin_email']} / {creds['admin_password']}")
            self.stdout.write(f"Demo API key: {creds['api_key']}")
            self.stdout.write(f"Demo tenant's plan: {creds['plan']} (limits far above a local load test; every answer "
                              "carries the x-ratelimit-* headers)")
            if stripe_base:
                self.stdout.write(f"Stripe stand-in: {stripe_base} (test keys; webhooks to this portal). Choose a "
                                  "plan on an organisation's Billing page to go through Checkout.")
            self.stdout.write("Stream a completion:")
            self.stdout.write(
                f"  curl -N {base}/v1/chat/completions -H 'Authorization: Bearer {creds['api_key']}' "
                "-H 'Content-Type: application/json' -d '{\"model\": \"mistralai/Mistral-7B-Instruct-v0.3\", "
                "\"stream\": true, \"messages\": [{\"role\": \"user\", \"content\": \"Hello from Sydney\"}]}'"
            )
            self.stdout.write("Press Ctrl-C to stop.\n")
            self.stdout.flush()
            while all(proc.poll() is None for proc in procs):
                time.sleep(0.5)
            self.stderr.write("A process stopped; shutting down.")
        except KeyboardInterrupt:
            pass
        finally:
            stop()


    def _start_stripe_stand_in(self, procs: list[subprocess.Popen], stripe_port: int, port: int) -> str:
        """Start the stand-in with fresh test keys; this process (the demo bootstrap syncs plans to it) and the
        processes started after it (they inherit the environment) use it."""
        base = f"http://127.0.0.1:{stripe_port}"
        keys = {
            "STRIPE_SECRET_KEY": "sk_test_" + secrets.token_urlsafe(24),
            "STRIPE_WEBHOOK_SECRET": "whsec_" + secrets.token_urlsafe(24),
            "STRIPE_API_BASE": base,
        }
        procs.append(subprocess.Popen([
            sys.executable, "-m", "tests.fakes.stripe", "--port", str(stripe_port), "--api-key",
            keys["STRIPE_SECRET_KEY"], "--webhook-secret", keys["STRIPE_WEBHOOK_SECRET"],
            "--webhook-url", f"http://127.0.0.1:{port}/billing/stripe/webhook/",
        ]))
        if not _wait_for(f"{base}/_fake/events", 30):
            self.stderr.write(f"The Stripe stand-in did not start on port {stripe_port}.")
            return ""
        os.environ.update(keys)
        for name, value in keys.items():
            setattr(settings, name, value)
        from billing import stripe_gateway

        stripe_gateway.reset_client()
        return base


class _Capture:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass
