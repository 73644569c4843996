"""The scorer: load a VideoScore checkpoint once, then turn batches of prepared videos into scores.

This module owns the model's lifecycle (``Scorer.load`` → ``warm_up`` → ``score_prepared`` … → ``close``), and
``ScorerProtocol``, what the engine asks of any scorer (this one, the fast stand-in of the test fleet, the
runtime's metering wrapper). Videos reach it prepared (``videoscore.worker.model.preprocess``: token ids and
resized pixels, built in the task threads); a batch is one collate on the device and one forward pass. What
differs between model families -- the model class, the processor, how a video becomes tensors -- is the family's
recipe (``videoscore.worker.model.recipes``): for Idefics2 the model card's (the checkpoint's processor, the
card's regression query with one ``<image>`` per frame), for Qwen2-VL the VideoScore-Qwen2-VL example's
(``videoscore.worker.model.qwen2_vl.recipe``). The logits are the five aspect scores, unrounded (rounding to 3
digits is for display only); right padding plus mantis' pooling rule make a video's scores independent of the
batch it travels in.
"""

from __future__ import annotations

import gc
import hashlib
import re
import struct
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from transformers import PreTrainedModel

from videoscore.core.errors import DeviceError, InvalidJobError, ModelLoadError
from videoscore.core.variants import ASPECTS, STAND_IN_MARKER, ModelSpec
from videoscore.worker.model.preprocess import PreparedRequest, Preprocessor, ScoreRequest
from videoscore.worker.model.recipes import recipe_for

__all__ = ["AspectScores", "BatchResult", "PreparedRequest", "ScoreRequest", "Scorer", "ScorerProtocol"]

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_WARM_UP_PROMPT = "warm up"


@dataclass(frozen=True)
class AspectScores:
    """The five VideoScore outputs, in the order of the model's logits (``videoscore.core.variants.ASPECTS``)."""

    visual_quality: float
    temporal_consistency: float
    dynamic_degree: float
    text_to_video_alignment: float
    factual_consistency: float

    def as_list(self) -> list[float]:
        return [getattr(self, name) for name in ASPECTS]

    @classmethod
    def from_logits(cls, logits: Sequence[float]) -> "AspectScores":
        """Build from one row of logits, kept at full float precision."""
        values = [float(x) for x in logits]
        if len(values) != len(ASPECTS):
            raise ValueError(f"expected {len(ASPECTS)} logits, got {len(values)}")
        return cls(**dict(zip(ASPECTS, values)))


assert tuple(f.name for f in fields(AspectScores)) == ASPECTS, "AspectScores must follow ASPECTS' order"


@dataclass(frozen=True)
class BatchResult:
    """Scores for a batch, in request order, with where the time went."""

    scores: list[AspectScores]
    preprocess_s: float  # the engine thread's part: collate, copy to the device, look up pixel values
    forward_s: float  # the forward pass, until the logits are on the host
    padded_fraction: float = 0.0  # share of the batch's pixel positions that are padding


@runtime_checkable
class ScorerProtocol(Protocol):
    """A loaded scorer, as the engine uses it: load (each kind its own way) → ``warm_up`` → ``score_prepared`` …
    → ``close``. Its requests were prepared in the task threads by the same kind's ``PreprocessorProtocol``.
    ``Scorer`` (the model) and ``videoscore.worker.testing.fast_scorer.FastScorer`` implement it."""

    @property
    def spec(self) -> ModelSpec:
        """The model it serves."""
        ...

    @property
    def revision(self) -> str:
        """The checkpoint's revision, stored with every score it gives."""
        ...

    @property
    def device(self) -> torch.device | str:
        """Where it runs (for logs)."""
        ...

    def warm_up(self) -> None:
        """Pay the first batch's one-off costs now."""
        ...

    def score_prepared(self, batch: Sequence[PreparedRequest]) -> BatchResult:
        """Score a batch of prepared requests; scores come back in request order."""
        ...

    def close(self) -> None:
        """Give back what it holds (the model, the device's memory, open files)."""
        ...


class Scorer:
    """A loaded VideoScore model and its preprocessor, ready to score batches (a ``ScorerProtocol``). Build it
    with ``Scorer.load``."""

    def __init__(
        self,
        spec: ModelSpec,
        preprocessor: Preprocessor,
        model: PreTrainedModel,
        device: torch.device,
        dtype: torch.dtype,
        revision: str,
    ) -> None:
        self.spec = spec
        self.device = device
        self.dtype = dtype
        self.revision = revision
        self.preprocessor = preprocessor
        self._recipe = preprocessor.recipe
        self._processor = preprocessor.processor
        self._model: PreTrainedModel | None = model
        # Pooling reads the model's pad id; padding writes the preprocessor's: one id for both.
        model.config.pad_token_id = preprocessor.pad_token_id
        self._pad_token_id = preprocessor.pad_token_id
        self.max_tokens = preprocessor.max_tokens
        table = self._recipe.value_table(self._processor)
        self._value_table = None if table is None else table.to(device)

    # --- lifecycle ------------------------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        spec: ModelSpec,
        *,
        device: str = "auto",
        dtype: str = "auto",
        attn_implementation: str | None = None,
    ) -> "Scorer":
        """Load ``spec.source`` (hub id or local folder) onto ``device`` in ``dtype``, in eval mode.

        ``device="auto"`` picks CUDA when present; ``dtype="auto"`` means bf16 on CUDA and fp32 on CPU.
        Raises ModelLoadError when the checkpoint cannot be loaded, DeviceError when the accelerator fails.
        """
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        recipe = recipe_for(spec.variant.family, num_frames=spec.num_frames)
        attn = attn_implementation or recipe.default_attn_implementation()

        with _device_errors():
            preprocessor = Preprocessor.load(spec, pin_memory=torch_device.type == "cuda")
            try:
                model = recipe.model_class.from_pretrained(spec.source, dtype=torch_dtype, attn_implementation=attn)
            except Exception as exc:  # noqa: BLE001 - any failure to load is the checkpoint's problem...
                if _is_device_failure(exc):
                    raise  # ...unless the accelerator failed: _device_errors makes that a DeviceError
                raise ModelLoadError(f"could not load {spec.label}: {exc}") from exc
            # transformers declares PreTrainedModel.to with functools.wraps, which mypy cannot bind to an instance
            model = model.to(torch_device).eval()  # type: ignore[arg-type]
        return cls(spec, preprocessor, model, torch_device, torch_dtype, checkpoint_revision(spec.source))

    def warm_up(self) -> None:
        """Run one tiny forward so the first real batch does not pay for kernel selection and allocation."""
        gradient = np.linspace(0, 255, 32 * 32 * 3).astype(np.uint8).reshape(32, 32, 3)
        self.score([ScoreRequest(frames=[gradient], prompt=_WARM_UP_PROMPT)])

    def close(self) -> None:
        """Drop the model and give its memory back (the CUDA cache included)."""
        self._model = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def __enter__(self) -> "Scorer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- scoring --------------------------------------------------------------------------------------------

    def check_prompt(self, prompt: str, num_frames: int | None = None) -> None:
        """``Preprocessor.check_prompt``: raise a PermanentError before any decoding if ``prompt`` cannot be scored."""
        self.preprocessor.check_prompt(prompt, num_frames)

    def score(self, requests: Sequence[ScoreRequest]) -> BatchResult:
        """Prepare and score a batch on this thread (the engine prepares in the task threads instead); scores
        come back in request order."""
        self._require_model()
        return self.score_prepared([self.preprocessor.prepare(request) for request in requests])

    def score_prepared(self, batch: Sequence[PreparedRequest]) -> BatchResult:
        """Collate, copy to the device and run one forward pass; scores come back in request order."""
        model = self._require_model()
        if not batch:
            return BatchResult(scores=[], preprocess_s=0.0, forward_s=0.0)
        if self._pad_token_id is None and len(batch) > 1:
            raise InvalidJobError("this checkpoint has no pad token, so it scores one video at a time")
        started = time.perf_counter()
        with _device_errors():
            tensors = self._recipe.collate(batch, pad_token_id=self._pad_token_id or 0, table=self._value_table,
                                           device=self.device, dtype=self.dtype)
            _synchronize(self.device)
            collated = time.perf_counter()
            with torch.inference_mode():
                logits = model(**tensors).logits
            rows = logits.float().cpu().tolist()
        finished = time.perf_counter()
        return BatchResult(
            scores=[AspectScores.from_logits(row) for row in rows],
            preprocess_s=collated - started,
            forward_s=finished - collated,
            padded_fraction=self._recipe.padded_fraction(batch),
        )

    # --- internals ------------------------------------------------------------------------------------------

    def _require_model(self) -> PreTrainedModel:
        if self._model is None:
            raise RuntimeError("this Scorer is closed")
        return self._model


# --- helpers ----------------------------------------------------------------------------------------------------


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} requested but CUDA is not available")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` → bf16 on CUDA, fp32 elsewhere (CPU bf16 matmuls are slow and less exact)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected auto or one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def checkpoint_revision(source: str) -> str:
    """The hub commit sha of the loaded checkpoint when known, else a short content hash of the folder.

    The hash covers config.json, the stand-in marker and each safetensors file's name, size and header (the
    header lists every tensor's name, dtype, shape and offsets): cheap, independent of mtimes, and different
    for any two checkpoints that differ in shape, layout or config.
    """
    folder = _checkpoint_folder(source)
    if folder is None:
        return "unknown"
    if folder.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", folder.name):
        return folder.name
    digest = hashlib.sha256()
    for name in ("config.json", STAND_IN_MARKER):
        if (folder / name).is_file():
            digest.update(name.encode() + b"\0" + (folder / name).read_bytes())
    for weights in sorted(folder.glob("*.safetensors")):
        digest.update(f"{weights.name}\0{weights.stat().st_size}\0".encode() + _safetensors_header(weights))
    return digest.hexdigest()[:16]


def _checkpoint_folder(source: str) -> Path | None:
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(source, "config.json")
    return Path(cached).parent if isinstance(cached, str) else None


def _safetensors_header(path: Path) -> bytes:
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return f.read(length)


def _is_device_failure(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(s in str(exc) for s in ("CUDA", "CUBLAS", "cuDNN"))


@contextmanager
def _device_errors() -> Iterator[None]:
    """Turn accelerator failures into DeviceError: a broken CUDA context needs a fresh process."""
    try:
        yield
    except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
        if _is_device_failure(exc):
            raise DeviceError(f"accelerator failure: {exc}") from exc
        raise


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

