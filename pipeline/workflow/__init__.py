"""Where DICOM I/O, the model and the database meet; Celery tasks and the CLI call these."""
