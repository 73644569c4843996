"""The GPU worker: Celery app, video pipeline and scoring engine. Heavy imports live here only."""
