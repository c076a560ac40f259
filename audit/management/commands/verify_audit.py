from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from audit.archive import check_archived_end
from audit.verify import verify


class Command(BaseCommand):
    help = "Recompute the audit hash chain; exit non-zero naming the first broken link."

    def handle(self, *args, **options) -> None:
        result = verify()
        broken = result.broken
        if broken is None:
            try:
                broken = check_archived_end()
            except Exception as exc:  # the proof is incomplete without it: say so, and fail
                raise CommandError(f"could not read the audit archive to check the chain's end: {exc}") from exc
        summary = (f"{result.entries} entries verified in {result.seconds:.2f}s "
                   f"({result.rate:,.0f} entries/s); {result.unsealed} not yet sealed")
        if broken:
            self.stderr.write(summary)
            raise CommandError(f"audit chain broken at {broken}")
        self.stdout.write(summary)
