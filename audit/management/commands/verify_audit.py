from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from audit.verify import verify


class Command(BaseCommand):
    help = "Recompute the audit hash chain; exit non-zero naming the first broken link."

    def handle(self, *args, **options) -> None:
        result = verify()
        summary = (f"{result.entries} entries verified in {result.seconds:.2f}s "
                   f"({result.rate:,.0f} entries/s); {result.unsealed} not yet sealed")
        if result.broken:
            self.stderr.write(summary)
            raise CommandError(f"audit chain broken at {result.broken}")
        self.stdout.write(summary)
