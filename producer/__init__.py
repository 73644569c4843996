"""The light producer: what generation pipelines import to submit scoring jobs and read their scores.

It imports no torch, transformers, av or numpy (a test proves it).

    from videoscore.producer import Client
    client = Client()                      # settings from VIDEOSCORE_* variables
    job = client.submit("s3://videos/a.mp4", prompt="a cat surfing")
    done = client.wait([job.id])
    print(done[0].scores)
"""

from videoscore.producer.client import Client, JobTimeoutError

__all__ = ["Client", "JobTimeoutError"]
