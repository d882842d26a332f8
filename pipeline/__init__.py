"""bonescan tracking, settings, Celery tasks, DICOM I/O and the admin CLI."""

__version__ = "0.1.0"
