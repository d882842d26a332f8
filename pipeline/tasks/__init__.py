"""Celery tasks. Only stable task names live here for now; workers register the tasks."""
