"""What a scoring job asks for, validated where it is submitted so bad requests fail fast and clearly."""

from __future__ import annotations

import unicodedata
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from videoscore.core.errors import InvalidJobError, PromptTooLongError
from videoscore.core.variants import MAX_MODEL_NAME_CHARS, ModelPolicy

ALLOWED_SCHEMES = ("s3", "file")
MAX_TAGS = 32
PRIORITIES = ("high", "normal", "low")
MAX_VIDEO_URI_CHARS = 2048  # an S3 URI is at most ~1,100 (63-character bucket, 1,024-byte key)
MAX_IDEMPOTENCY_KEY_CHARS = 200  # the column's width, checked after normalisation (NFKC may lengthen a key)
Priority = Literal["high", "normal", "low"]


class JobRequest(BaseModel):
    """One video to score: where it is, the prompt it was generated from, and which model scores it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # json_schema_extra documents (in the API's OpenAPI) what the validators below enforce
    video_uri: str = Field(max_length=MAX_VIDEO_URI_CHARS,
                           json_schema_extra={"pattern": r"^(s3://[^/]+/.+|file:///.+)$",
                                              "examples": ["s3://gen-videos/run42/0001.mp4"]})
    prompt: str = Field(json_schema_extra={"pattern": r"\S", "examples": ["a cat surfing a wave at sunset"]})
    model: str = Field("", max_length=MAX_MODEL_NAME_CHARS, description=(
        "A VideoScore hub id (see core.variants) or a checkpoint folder inside the model roots "
        "(VIDEOSCORE_MODEL_ROOTS); empty or absent: the deployment's default model (VIDEOSCORE_MODEL)"))
    batch: str | None = Field(None, max_length=200)
    tags: dict[str, str] = Field(default_factory=dict, json_schema_extra={
        "maxProperties": MAX_TAGS, "propertyNames": {"minLength": 1, "maxLength": 100},
        "additionalProperties": {"type": "string", "maxLength": 500}})
    idempotency_key: str | None = Field(None, max_length=MAX_IDEMPOTENCY_KEY_CHARS, description=(
        "Same key, same job: normalised first (normalize_idempotency_key: NFKC, surrounding whitespace and "
        "zero-width characters removed; case kept). Reusing a key for a different job is a conflict (409)"))
    priority: Priority = "normal"  # picks the broker queue (core.queueing.queue_for)
    force: bool = False  # score again even if the same video, prompt and model already have scores

    @field_validator("video_uri")
    @classmethod
    def _uri_has_known_scheme(cls, uri: str) -> str:
        parsed = urlparse(uri)
        if parsed.scheme not in ALLOWED_SCHEMES:
            raise ValueError(f"video_uri must start with s3:// or file://, got {uri!r}")
        if parsed.scheme == "s3" and (not parsed.netloc or not parsed.path.strip("/")):
            raise ValueError(f"video_uri must look like s3://bucket/key, got {uri!r}")
        if parsed.scheme == "file" and not parsed.path:
            raise ValueError(f"video_uri must look like file:///absolute/path, got {uri!r}")
        return uri

    @field_validator("prompt")
    @classmethod
    def _prompt_is_text(cls, prompt: str) -> str:
        if not prompt.strip():
            raise ValueError("prompt must not be empty")
        if "\x00" in prompt:
            raise ValueError("prompt must not contain NUL characters")
        return prompt

    @field_validator("tags")
    @classmethod
    def _few_tags(cls, tags: dict[str, str]) -> dict[str, str]:
        if len(tags) > MAX_TAGS:
            raise ValueError(f"at most {MAX_TAGS} tags")
        for key, value in tags.items():
            if not key or len(key) > 100 or len(value) > 500:
                raise ValueError("tag keys must be 1-100 characters and values at most 500")
            _storable(key)
            _storable(value)
        return tags

    @field_validator("video_uri", "prompt", "model", "batch", "idempotency_key")
    @classmethod
    def _storable_text(cls, value: str | None) -> str | None:
        return None if value is None else _storable(value)

    @field_validator("idempotency_key")
    @classmethod
    def _one_spelling_per_key(cls, key: str | None) -> str | None:
        if key is None:
            return None
        normal = normalize_idempotency_key(key)
        if not normal:
            raise ValueError("idempotency_key must not be blank")
        if len(normal) > MAX_IDEMPOTENCY_KEY_CHARS:
            raise ValueError(f"idempotency_key is longer than {MAX_IDEMPOTENCY_KEY_CHARS} characters once normalised")
        return normal


# Invisible characters a copy and paste or an editor slips into a key; removed wherever they are.
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180e"
                                    "\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                                    "\u2060\u2061\u2062\u2063\u2064\u2066\u2067\u2068\u2069\u3164"
                                    "\ufe00\ufe01\ufe02\ufe03\ufe04\ufe05\ufe06\ufe07\ufe08\ufe09\ufe0a"
                                    "\ufe0b\ufe0c\ufe0d\ufe0e\ufe0f\ufeff\uffa0"))


def normalize_idempotency_key(key: str) -> str:
    """The one spelling of an idempotency key, so keys a person reads as the same name one job.

    Unicode NFKC (composed, and compatibility forms folded: fullwidth `ｋｅｙ１` is `key1`, `ﬁ` is `fi`), then
    zero-width and other invisible formatting characters removed (ZWSP, ZWNJ, ZWJ, word joiner, BOM, soft
    hyphen, bidi marks, variation selectors), then surrounding whitespace trimmed. Case is kept: keys are opaque
    and case-sensitive, as in Stripe's API and the IETF Idempotency-Key draft, so `Run-1` and `run-1` are two
    keys. A printable ASCII key without surrounding spaces, what pipelines mostly send, is its own normal form,
    so such keys stored before this rule still match.
    The SDK and the API both apply it, through JobRequest's validation.
    """
    return unicodedata.normalize("NFKC", key).translate(_ZERO_WIDTH).strip()


def _storable(text: str) -> str:
    """Refuse text a database cannot store: NUL (PostgreSQL rejects it) and lone surrogates (not UTF-8)."""
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return text


def validate_job(raw: dict[str, Any] | JobRequest, *, max_prompt_chars: int,
                 models: ModelPolicy = ModelPolicy()) -> JobRequest:
    """Parse and check a job request; raise an InvalidJobError subclass naming what is wrong.

    The job that comes back names its model by its one name (``models.resolve``): the default model when it named
    none, a folder by its real path. ``models`` is the deployment's (``ModelPolicy.of(settings)``); without it
    only the registered hub ids are allowed, and the hub's v1.1 is the default.
    """
    try:
        job = raw if isinstance(raw, JobRequest) else JobRequest.model_validate(raw)
    except ValidationError as exc:
        raise InvalidJobError(_describe_validation_error(exc)) from None
    if len(job.prompt) > max_prompt_chars:
        raise PromptTooLongError(f"prompt has {len(job.prompt)} characters; the limit is {max_prompt_chars}")
    model = models.resolve(job.model).name  # raises UnknownModelError with the list of known variants
    return job if model == job.model else job.model_copy(update={"model": model})


def _describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "request"
        parts.append(f"{where}: {err['msg']}")
    return "invalid job: " + "; ".join(parts)
