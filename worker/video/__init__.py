"""The video path: fetch a job's video (S3, or a local file where allowed) and sample its frames (PyAV)."""
