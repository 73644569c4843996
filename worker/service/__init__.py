"""The Celery service: tasks, their decisions, the database gate, maintenance, metrics and the worker process."""
