from django.core.management.base import BaseCommand

from inference.services import backends_publish, backends_seed_from_settings


class Command(BaseCommand):
    help = "Create or update backends from INFERENCE_BACKENDS and publish the pool to Redis."

    def handle(self, *args, **options):
        seeded = backends_seed_from_settings()
        items = backends_publish()
        self.stdout.write(f"{len(seeded)} backend(s) from settings; {len(items)} published.")
