from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = "Audit trail"

    def ready(self) -> None:
        from audit import residency  # noqa: F401  (registers the storage region checks)
        from audit.transcripts import register_holder

        register_holder()  # transcripts are end-customer data for individuals' requests (R-DSR)
