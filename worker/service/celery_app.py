"""The `celery -A` entry: a Celery app with the score task registered, for Celery's own tools.

    celery -A videoscore.worker.service.celery_app inspect ping
    celery -A videoscore.worker.service.celery_app inspect registered
    celery -A videoscore.worker.service.celery_app events --dump

This is the one module that builds its app from `Settings()` at import: `celery -A` imports a module and reads
`app` from it, with no place to pass settings in. It reads `VIDEOSCORE_*` like every other entry point, so
point `VIDEOSCORE_BROKER_URL` at the fleet's Redis. Registering the task imports the worker's modules (torch among
them: a few seconds), but nothing touches a device or a database. Workers are started with `videoscore worker`,
not `celery -A … worker`, because they also need their runtime (database, engine, reaper).
"""

from __future__ import annotations

from videoscore.core.queueing import make_celery_app
from videoscore.core.settings import Settings
from videoscore.worker.service.tasks import register_tasks

app = make_celery_app(Settings())
register_tasks(app)
