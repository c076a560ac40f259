from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from billing.access_log import access_verify


class Command(BaseCommand):
    help = ("Recompute each sealed access-log batch's digest from its records; exit non-zero naming the first "
            "batch whose records were edited, deleted or added. Run it with verify_audit, which checks the chain "
            "that holds the batches' digests.")

    def handle(self, *args, **options) -> None:
        result = access_verify()
        summary = (f"{result.batches} access batches ({result.records} records) verified in {result.seconds:.2f}s; "
                   f"{result.unsealed} records not yet sealed")
        if result.broken:
            self.stderr.write(summary)
            raise CommandError(f"access log broken at {result.broken}")
        self.stdout.write(summary)
