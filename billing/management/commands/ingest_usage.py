import signal
import threading

from django.core.management.base import BaseCommand

from billing.services import usage_ingest, usage_ingest_loop


class Command(BaseCommand):
    help = "Move usage events from the Redis stream into the database (runs until stopped, or --once)."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="Drain what is there now and exit.")

    def handle(self, *args, **options):
        if options["once"]:
            self.stdout.write(f"{usage_ingest()} event(s) ingested.")
            return
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        usage_ingest_loop(stop=stop)
