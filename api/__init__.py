"""The REST API: the SDK's submit, read, cancel and query calls over HTTP (FastAPI, OpenAPI at /openapi.json).

It holds no logic of its own: submitting goes through producer.client.Client and reads through db.queries.
Run it with `videoscore api --host 127.0.0.1 --port 8000`.
"""

from videoscore.api.app import create_app

__all__ = ["create_app"]
