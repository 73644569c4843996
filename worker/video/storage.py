"""Fetch stage: bring a job's video from S3 (or a local file) to a scratch file, with clear error kinds.

Only `s3://` and `file://` are ever fetched (no SSRF through arbitrary URLs), S3 buckets can be limited to an
allowlist, and an object larger than the configured limit is refused before its body is read.

`file://` is off unless `allow_file_uris` is set, and then reads only regular files under `file_roots`,
judged after percent-decoding and resolving `..` and symlinks; a URI naming a host is refused. A file outside
the roots, missing, or not a regular file (a FIFO, a device, a folder) fails the same way, kind and message,
so a job cannot learn what exists on a worker's disk; only a file a worker may read reports its size.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from videoscore.core.errors import (
    StorageUnavailableError,
    VideoAccessDeniedError,
    VideoNotFoundError,
    VideoTooLargeError,
)
from videoscore.core.settings import Settings

log = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
# Never videos, whatever the roots say: the kernel's views of processes, devices and settings.
_KERNEL_FILE_SYSTEMS = ("/proc", "/sys", "/dev")
NOT_FOUND_CODES = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
DENIED_CODES = {"AccessDenied", "403", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch"}


@dataclass(frozen=True)
class FetchedVideo:
    path: Path
    size_bytes: int
    etag: str | None
    download_s: float


def make_s3_client(settings: Settings) -> Any:
    """An S3 client that resolves as plain boto3 does, with the ``VIDEOSCORE_S3_*`` settings as overrides.

    Only what is set is passed, so nothing pins a default: otherwise the region and endpoint come from
    ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` or the profile named by ``AWS_PROFILE``,
    and credentials from boto3's chain (instance and task roles included). ``AWS_REGION``, which the AWS CLI v2
    and the other AWS SDKs read before ``AWS_DEFAULT_REGION`` but boto3 does not, is honoured the same way. A
    key id without its secret (or the reverse) is passed as is, for boto3 to refuse as partial credentials.
    """
    overrides: dict[str, str] = {}
    if settings.s3_endpoint_url:
        overrides["endpoint_url"] = settings.s3_endpoint_url
    region = settings.s3_region or os.environ.get("AWS_REGION", "").strip()
    if region:
        overrides["region_name"] = region
    if settings.s3_access_key_id:
        overrides["aws_access_key_id"] = settings.s3_access_key_id
    if settings.s3_secret_access_key:
        overrides["aws_secret_access_key"] = settings.s3_secret_access_key.get_secret_value()
    # A session of its own: boto3's default session is made once per process and keeps the profile it saw then.
    return boto3.session.Session().client(
        "s3",
        **overrides,
        config=BotoConfig(
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=5,
            read_timeout=60,
            signature_version="s3v4",
        ),
    )


class VideoStore:
    """Downloads videos into a scratch folder; one instance per worker process, shared by its threads."""

    def __init__(self, settings: Settings, s3_client: Any | None = None) -> None:
        self.settings = settings
        self._s3 = s3_client or make_s3_client(settings)

    @contextmanager
    def fetch(self, uri: str) -> Iterator[FetchedVideo]:
        """Yield the video as a local file; the scratch copy is deleted afterwards."""
        parsed = urlparse(uri)
        scratch = Path(tempfile.mkdtemp(prefix="videoscore-", dir=self.settings.work_dir))
        try:
            if parsed.scheme == "s3":
                yield self._fetch_s3(parsed.netloc, parsed.path.lstrip("/"), scratch)
            elif parsed.scheme == "file":
                yield self._fetch_file(parsed.netloc, unquote(parsed.path))
            else:
                raise VideoAccessDeniedError(
                    f"scheme {parsed.scheme!r} is not fetched by workers (s3:// or file:// only)"
                )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def etag(self, uri: str) -> str | None:
        """The S3 object's ETag from a HEAD (no body read), for content dedupe; None for file:// videos.

        Checks the allowlist and classifies errors like `fetch`, so a missing object fails here already.
        """
        parsed = urlparse(uri)
        if parsed.scheme != "s3":
            return None
        bucket, key = parsed.netloc, parsed.path.lstrip("/")
        allowed = self.settings.allowed_buckets
        if allowed and bucket not in allowed:
            raise VideoAccessDeniedError(f"bucket {bucket!r} is not in this worker's allowlist")
        try:
            response = self._s3.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            error = _classify_client_error(exc, bucket, key)
            if isinstance(error, VideoNotFoundError) and not self._bucket_exists(bucket):
                # A HEAD answers a bare 404 for both; say which one is missing, as a GET would.
                error = VideoNotFoundError(f"bucket {bucket!r} does not exist")
            raise error from None
        except BotoCoreError as exc:
            raise StorageUnavailableError(f"S3 unreachable while reading s3://{bucket}/{key}: {exc}") from None
        return str(response.get("ETag", "")).strip('"') or None

    def _fetch_file(self, host: str, path: str) -> FetchedVideo:
        if not self.settings.allow_file_uris:
            raise VideoAccessDeniedError("file:// videos are disabled on this worker (VIDEOSCORE_ALLOW_FILE_URIS)")
        if host:
            raise VideoAccessDeniedError(f"file:// URIs name no host (file:///path), got host {host!r}")
        started = time.perf_counter()
        resolved = self._readable_file(path)
        size = resolved.stat().st_size
        self._check_size(size, str(resolved))
        return FetchedVideo(path=resolved, size_bytes=size, etag=None, download_s=time.perf_counter() - started)

    def _readable_file(self, path: str) -> Path:
        """`path` resolved, if it is a regular file under a file root; else the one error for every reason."""
        unavailable = VideoNotFoundError(f"no such file: {path}")
        if "\0" in path or not os.path.isabs(path):
            raise unavailable
        resolved = os.path.realpath(path)  # symlinks and .. (percent-decoding was done by the caller)
        roots = [os.path.realpath(root) for root in self.settings.file_roots]
        if any(_is_within(resolved, kernel) for kernel in _KERNEL_FILE_SYSTEMS) or not any(
            _is_within(resolved, root) for root in roots
        ):
            log.info("file:// %s resolves to %s, outside VIDEOSCORE_FILE_ROOTS %s", path, resolved, roots)
            raise unavailable
        try:
            mode = os.stat(resolved).st_mode  # stat only: a FIFO or device is never opened
        except OSError:
            raise unavailable from None
        if not stat.S_ISREG(mode):
            log.info("file:// %s is not a regular file", path)
            raise unavailable
        return Path(resolved)

    def _fetch_s3(self, bucket: str, key: str, scratch: Path) -> FetchedVideo:
        allowed = self.settings.allowed_buckets
        if allowed and bucket not in allowed:
            raise VideoAccessDeniedError(f"bucket {bucket!r} is not in this worker's allowlist")
        uri = f"s3://{bucket}/{key}"
        started = time.perf_counter()
        target = scratch / (Path(key).name or "video")
        try:
            response = self._s3.get_object(Bucket=bucket, Key=key)
            size = int(response["ContentLength"])
            self._check_size(size, uri)
            with target.open("wb") as out:
                for chunk in response["Body"].iter_chunks(CHUNK_BYTES):
                    out.write(chunk)
        except ClientError as exc:
            raise _classify_client_error(exc, bucket, key) from None
        except BotoCoreError as exc:  # connection refused, timeouts, a body cut off mid-stream
            raise StorageUnavailableError(f"S3 unreachable while fetching {uri}: {type(exc).__name__}: {exc}") from None
        etag = str(response.get("ETag", "")).strip('"') or None
        return FetchedVideo(path=target, size_bytes=size, etag=etag, download_s=time.perf_counter() - started)

    def _bucket_exists(self, bucket: str) -> bool:
        return _bucket_exists_or_unknown(self._s3, bucket)

    def _check_size(self, size: int, where: str) -> None:
        limit = self.settings.max_video_bytes
        if size > limit:
            raise VideoTooLargeError(f"{where} is {size:,} bytes; the limit is {limit:,} (VIDEOSCORE_MAX_VIDEO_BYTES)")


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _bucket_exists_or_unknown(s3: Any, bucket: str) -> bool:
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0) != 404
    except BotoCoreError:
        return True  # cannot tell; keep the object-level message
    return True


def _classify_client_error(exc: ClientError, bucket: str, key: str) -> Exception:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code == "NoSuchBucket":
        return VideoNotFoundError(f"bucket {bucket!r} does not exist")
    if code in NOT_FOUND_CODES or status == 404:
        return VideoNotFoundError(f"s3://{bucket}/{key} does not exist")
    if code in DENIED_CODES or status == 403:
        return VideoAccessDeniedError(f"access denied to s3://{bucket}/{key} ({code})")
    if status >= 500 or code in {"SlowDown", "Throttling", "RequestTimeout", "ServiceUnavailable", "InternalError"}:
        return StorageUnavailableError(f"S3 answered {status} {code} for s3://{bucket}/{key}")
    return VideoAccessDeniedError(f"S3 refused s3://{bucket}/{key}: {status} {code}")
