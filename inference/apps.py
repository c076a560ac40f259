from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "inference"
    verbose_name = "Inference"

    def ready(self) -> None:
        from inference import checks, personal_data  # noqa: F401  (registers the region checks)

        personal_data.register_holder()  # conversations, for individuals' requests
