"""VideoScore Queue: score AI-generated videos with VideoScore at fleet scale.

One import name, one room per concern (each a sub-package; in the repository each room is a top-level folder,
linked here):

* ``videoscore.core``     settings, the error tree, the model registry, the job request, queues, and the services
                          both sides use (batch webhooks, the queue-load metric). Light.
* ``videoscore.db``       schema, sessions, migrations and every query: the single source of truth for job state.
* ``videoscore.producer`` the SDK pipelines import (``Client``), manifests and result rendering. Light: no torch,
                          transformers, av or numpy.
* ``videoscore.api``      the REST API over the SDK.
* ``videoscore.worker``   the GPU worker: the Celery service, the video path, the model, and test scaffolding.
* ``videoscore.cli``      the ``videoscore`` command, which wires every app (lazily); ``videoscore.demo`` and
                          ``videoscore.report`` are the two apps that need both the producer and the worker.
"""

__version__ = "0.1.0"
