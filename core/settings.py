"""One typed settings object, read from ``VIDEOSCORE_*`` environment variables.

Nothing reads the environment at import time: call ``Settings()`` (or ``Settings.from_env()``) where a
program starts, and pass the object down.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from videoscore.core.variants import DEFAULT_MODEL


class Settings(BaseSettings):
    """Every knob of VideoScore Queue. The README's settings table mirrors this class."""

    model_config = SettingsConfigDict(env_prefix="VIDEOSCORE_", extra="ignore")

    # where job state lives and how jobs travel
    database_url: str = Field("sqlite:///videoscore.db", description="SQLAlchemy URL of the job database")
    broker_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker URL (Redis)")
    queue: str = Field("videoscore", description="Broker queue the producer sends to and the worker reads")
    visibility_timeout_s: int = Field(
        120,
        description="Seconds before Redis hands out an unacknowledged message again (recovers messages a dead "
        "worker received but never claimed)",
    )
    redis_restore_interval_s: int = Field(
        5, description="Seconds between a worker's sweeps that put messages past the visibility timeout back"
    )
    queue_per_model: bool = Field(
        False, description="Send each model's jobs to its own queue, <queue>.<model-slug>[.high|.low]"
    )
    worker_queues: list[str] = Field(
        default_factory=list,
        description="Queues a worker reads, first = most urgent (JSON list); empty: the default model's three",
    )

    # object storage
    s3_endpoint_url: str | None = Field(
        None, description="S3 API endpoint, overriding boto3's (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, profile); "
        "unset or empty: boto3's, else AWS"
    )
    s3_region: str | None = Field(
        None, description="S3 region, overriding boto3's (AWS_REGION, AWS_DEFAULT_REGION, profile); unset or "
        "empty: boto3's"
    )
    s3_access_key_id: str | None = Field(
        None, description="S3 access key, with the secret key; unset or empty: boto3's chain (AWS_* variables, "
        "AWS_PROFILE, instance or task role)"
    )
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret key (never logged)")
    allowed_buckets: list[str] = Field(
        default_factory=list, description="Buckets a worker may read (JSON list); empty allows all"
    )
    allow_file_uris: bool = Field(
        False, description="Whether workers may read file:// videos (only under file_roots; off by default)"
    )
    file_roots: list[str] = Field(
        default_factory=list,
        description="Folders file:// videos may be read from (JSON list), after resolving symlinks and ..; "
        "empty: none",
    )
    max_video_bytes: int = Field(512 * 1024 * 1024, description="Largest video a worker downloads")
    max_video_pixels: int = Field(3840 * 2160, description="Largest frame (width × height) a worker decodes")
    max_decode_bytes: int = Field(
        2 * 1024**3,
        description="Memory a job's sampled frames may take (RGB bytes × the model family's copies while "
        "preprocessing); a larger job fails as video_too_large before decoding",
    )

    # the model
    model: str = Field(DEFAULT_MODEL, description="Default model: hub id or local checkpoint folder")
    model_roots: list[str] = Field(
        default_factory=list,
        description="Folders whose checkpoints jobs may name (JSON list; symlinks and .. resolved first); empty: "
        "jobs may name the registered hub ids and the default model only",
    )
    model_load_retry_after_s: float = Field(
        300.0, description="After a model fails to load, jobs naming it fail at once (model_load_error) this long"
    )
    model_switch_after_s: float = Field(
        60.0, description="Longest the loaded model keeps the device, once loaded, while jobs for another model wait"
    )
    num_frames: int | None = Field(None, description="Override the variant's frame count (rarely needed)")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Model dtype; auto means bf16 on GPU, fp32 on CPU"
    )
    device: str = Field("auto", description="torch device; auto picks cuda when present")
    max_prompt_chars: int = Field(2000, description="Longest accepted prompt, in characters")

    # the worker
    batch_size: int = Field(1, description="Most videos per forward pass")
    batch_wait_ms: int = Field(50, description="Longest wait for a batch to fill")
    max_attempts: int = Field(5, description="Attempts before a job with transient errors fails for good")
    retry_base_delay_s: float = Field(
        2.0, description="Backoff before the first retry; it doubles per attempt, with ±50% jitter"
    )
    retry_max_delay_s: float = Field(60.0, description="Longest backoff between two attempts of a job")
    score_timeout_s: int = Field(
        600, description="Longest a job waits for its forward pass before failing with kind time_limit"
    )
    job_timeout_s: int = Field(
        900, description="Longest one attempt may take, download and decode included, before failing with time_limit"
    )
    work_dir: str | None = Field(None, description="Scratch folder for downloads (default: system temp)")

    # fault tolerance and observability of the fleet (see the README's "Delivery and recovery")
    heartbeat_interval_s: float = Field(5.0, description="How often a worker refreshes the heartbeat of its jobs")
    lease_s: float = Field(
        30.0, description="A running job whose heartbeat is older than this is presumed orphaned and re-sent"
    )
    reap_interval_s: float = Field(10.0, description="How often each worker looks for orphaned or unsent jobs")
    reconcile_interval_s: float = Field(
        300.0, description="How often one worker checks that Redis still holds every queued job's message (and at "
        "once after Redis restarts)"
    )
    db_wait_s: float = Field(
        60.0, description="Longest a task waits in place for an unreachable database before re-sending its job"
    )
    metrics_port: int = Field(9108, description="Port of the worker's Prometheus /metrics endpoint; 0 turns it off")
    metrics_host: str = Field(
        "127.0.0.1", description="Address the worker's /metrics and the exporter (`videoscore fleet --serve`) bind; "
        "0.0.0.0 where a scraper on another host must reach them (the container recipes set it)"
    )

    # the producer
    poll_interval_s: float = Field(0.5, description="How often wait() polls the database")

    # the REST API and batch webhooks
    api_tokens: list[SecretStr] = Field(
        default_factory=list, description="Bearer tokens the REST API accepts (JSON list); empty refuses every call"
    )
    api_max_body_bytes: int = Field(16 * 1024 * 1024, description="Largest request body the REST API reads")
    api_max_jobs_per_request: int = Field(10_000, description="Most jobs one POST /jobs may submit")
    webhook_secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 key that signs batch webhooks (X-VideoScore-Signature header)"
    )
    webhook_max_attempts: int = Field(5, description="Deliveries tried per batch webhook (exponential backoff)")
    webhook_timeout_s: float = Field(10.0, description="Seconds a webhook receiver has to answer")
    webhook_allowed_hosts: list[str] = Field(
        default_factory=list, description="Hosts batch webhooks may be sent to (JSON list; `*.example.com` matches "
        "its subdomains); empty allows any host whose addresses are public"
    )
    webhook_allow_private_addresses: bool = Field(
        False, description="Allow webhook receivers on loopback, private and link-local addresses (on-prem); "
        "cloud-metadata, multicast, reserved and unspecified addresses stay refused"
    )
    api_docs: bool = Field(
        False, description="Serve Swagger UI at /docs and ReDoc at /redoc (their scripts load from a public CDN); "
        "/openapi.json is always served"
    )

    @field_validator("s3_endpoint_url", "s3_region", "s3_access_key_id", "s3_secret_access_key", mode="before")
    @classmethod
    def _empty_s3_is_unset(cls, value: object) -> object:
        # `export VIDEOSCORE_S3_ENDPOINT_URL=''` is how shells and compose files unset a variable; boto3 would
        # take '' as an endpoint ("Invalid endpoint") or a region, instead of resolving its own.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _lease_outlives_heartbeats(self) -> "Settings":
        # A lease shorter than a couple of heartbeats would hand live workers' jobs to others.
        if self.lease_s < 2 * self.heartbeat_interval_s:
            raise ValueError(
                f"lease_s ({self.lease_s}) must be at least twice heartbeat_interval_s ({self.heartbeat_interval_s})"
            )
        return self

    @classmethod
    def from_env(cls) -> "Settings":
        return cls()

    def to_env(self) -> dict[str, str]:
        """The VIDEOSCORE_* variables that reproduce these settings in a child process."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if isinstance(value, list):
                value = json.dumps([v.get_secret_value() if isinstance(v, SecretStr) else v for v in value])
            env[f"VIDEOSCORE_{name.upper()}"] = str(value)
        return env
