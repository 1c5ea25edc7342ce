from django.apps import AppConfig


class DicomnetConfig(AppConfig):
    name = "backend.dicomnet"
    label = "dicomnet"
    verbose_name = "DICOM network (listener, results to the PACS)"

    def ready(self) -> None:
        from . import signals  # noqa: F401  (sends results out when a received study finishes)
