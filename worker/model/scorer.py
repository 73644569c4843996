"""The scorer: load a VideoScore checkpoint once, then turn batches of frames + prompts into scores.

This module owns the model's lifecycle (``Scorer.load`` → ``warm_up`` → ``score`` … → ``close``), and
``ScorerProtocol``, what the engine asks of any scorer (this one, the fast stand-in of the test fleet, the
runtime's metering wrapper). What differs
between model families -- the model class, the processor, how frames and prompt become tensors -- is the
family's recipe (``videoscore.worker.model.recipes``): for Idefics2 the model card's (frames become PIL images with
``Image.fromarray``, the prompt is the card's regression query with one ``<image>`` per frame), for Qwen2-VL
the VideoScore-Qwen2-VL example's (``videoscore.worker.model.qwen2_vl.recipe``). The logits are the five aspect scores,
unrounded (rounding to 3 digits is for display only). A batch is one processor call and one forward pass; right
padding plus mantis' pooling rule make a video's scores independent of the batch it travels in.
"""

from __future__ import annotations

import gc
import hashlib
import re
import struct
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from transformers import PreTrainedModel

from videoscore.core.errors import DeviceError, InvalidJobError, ModelLoadError, PromptTooLongError
from videoscore.core.variants import ASPECTS, STAND_IN_MARKER, ModelSpec
from videoscore.worker.model.recipes import ScoringRecipe, recipe_for

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Tokenizers without a real limit report a huge sentinel (int(1e30)); anything above this is "no limit".
_SANE_MAX_LENGTH = 1_000_000
_WARM_UP_PROMPT = "warm up"


@dataclass(frozen=True)
class ScoreRequest:
    """One video to score: its sampled frames (H×W×3 uint8 RGB, in temporal order) and its text prompt."""

    frames: list[np.ndarray]
    prompt: str


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
    preprocess_s: float  # frames → PIL → processor → tensors on the device
    forward_s: float  # the forward pass, until the logits are on the host


@runtime_checkable
class ScorerProtocol(Protocol):
    """A loaded scorer, as the engine uses it: load (each kind its own way) → ``warm_up`` → ``check_prompt`` and
    ``score`` … → ``close``. ``Scorer`` (the model) and ``videoscore.worker.testing.fast_scorer.FastScorer``
    implement it."""

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

    @property
    def max_tokens(self) -> int:
        """The longest input, prompt plus frames, in tokens, that it accepts."""
        ...

    def warm_up(self) -> None:
        """Pay the first batch's one-off costs now."""
        ...

    def check_prompt(self, prompt: str, num_frames: int | None = None) -> None:
        """Raise a PermanentError if ``prompt`` with ``num_frames`` frames (default: the variant's) cannot be scored."""
        ...

    def score(self, requests: Sequence[ScoreRequest]) -> BatchResult:
        """Score a batch; scores come back in request order."""
        ...

    def close(self) -> None:
        """Give back what it holds (the model, the device's memory, open files)."""
        ...


class Scorer:
    """A loaded VideoScore model and its processor, ready to score batches (a ``ScorerProtocol``). Build it with
    ``Scorer.load``."""

    def __init__(
        self,
        spec: ModelSpec,
        processor,
        model: PreTrainedModel,
        device: torch.device,
        dtype: torch.dtype,
        revision: str,
        recipe: ScoringRecipe | None = None,
    ) -> None:
        self.spec = spec
        self.device = device
        self.dtype = dtype
        self.revision = revision
        self._recipe = recipe or recipe_for(spec.variant.family, num_frames=spec.num_frames)
        self._processor = processor
        self._model: PreTrainedModel | None = model
        tokenizer = self._recipe.tokenizer(processor)
        self._tokenizer = tokenizer
        self._pad_token_id = _align_padding(tokenizer, model.config)
        self.max_tokens = _max_tokens(tokenizer, model.config)

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
            try:
                processor = recipe.load_processor(spec.source)
                model = recipe.model_class.from_pretrained(spec.source, dtype=torch_dtype, attn_implementation=attn)
            except Exception as exc:  # noqa: BLE001 - any failure to load is the checkpoint's problem...
                if _is_device_failure(exc):
                    raise  # ...unless the accelerator failed: _device_errors makes that a DeviceError
                raise ModelLoadError(f"could not load {spec.label}: {exc}") from exc
            # transformers declares PreTrainedModel.to with functools.wraps, which mypy cannot bind to an instance
            model = model.to(torch_device).eval()  # type: ignore[arg-type]
        return cls(spec, processor, model, torch_device, torch_dtype, checkpoint_revision(spec.source), recipe)

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
        """Raise before any decoding if ``prompt`` cannot be scored with ``num_frames`` frames.

        PromptTooLongError when prompt + image tokens exceed what the model accepts (``max_tokens``);
        InvalidJobError when the prompt spells the pad token, which would move the scored position.
        ``num_frames`` defaults to the variant's frame count.
        """
        frames = num_frames if num_frames is not None else self.spec.num_frames
        input_ids = self._recipe.prompt_ids(self._processor, prompt, frames)
        self._check_tokens(list(input_ids), frames)

    def score(self, requests: Sequence[ScoreRequest]) -> BatchResult:
        """Score a batch with one processor call and one forward pass; scores come back in request order."""
        model = self._require_model()
        if not requests:
            return BatchResult(scores=[], preprocess_s=0.0, forward_s=0.0)
        for request in requests:
            _validate(request)

        started = time.perf_counter()
        inputs = self._recipe.encode(self._processor, requests)
        for row, mask, request in zip(inputs["input_ids"], inputs["attention_mask"], requests):
            # Right padding: the first `length` tokens are the request's own.
            self._check_tokens(row[: int(mask.sum())].tolist(), len(request.frames))
        with _device_errors():
            tensors = self._to_device(inputs)
            _synchronize(self.device)
            preprocessed = time.perf_counter()
            with torch.inference_mode():
                logits = model(**tensors).logits
            rows = logits.float().cpu().tolist()
        finished = time.perf_counter()
        return BatchResult(
            scores=[AspectScores.from_logits(row) for row in rows],
            preprocess_s=preprocessed - started,
            forward_s=finished - preprocessed,
        )

    # --- internals ------------------------------------------------------------------------------------------

    def _require_model(self) -> PreTrainedModel:
        if self._model is None:
            raise RuntimeError("this Scorer is closed")
        return self._model

    def _check_tokens(self, input_ids: list[int], num_frames: int) -> None:
        if len(input_ids) > self.max_tokens:
            raise PromptTooLongError(
                f"prompt plus {num_frames} frame{'s' if num_frames != 1 else ''} needs {len(input_ids)} tokens;"
                f" the model accepts {self.max_tokens}"
            )
        if self._pad_token_id is not None and self._pad_token_id in input_ids:
            token = self._tokenizer.convert_ids_to_tokens(self._pad_token_id)
            raise InvalidJobError(f"prompt contains the reserved token {token!r}")

    def _to_device(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tensors = {}
        for key, value in inputs.items():
            if key in self._recipe.pixel_keys:
                # Cast on the way over: bf16 halves the copy, and the model casts to its dtype anyway.
                tensors[key] = value.to(self.device, dtype=self.dtype, non_blocking=True)
            else:
                tensors[key] = value.to(self.device, non_blocking=True)
        return tensors


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


def _align_padding(tokenizer, config) -> int | None:
    """Make tokenizer padding and the model's pooling agree on one pad id, and pad on the right.

    A checkpoint without a top-level pad id pools the last position, which equals mantis' first-pad rule on
    unpadded rows; giving it the tokenizer's pad id keeps single-video scores unchanged and lets batches work.
    """
    pad_id = getattr(config, "pad_token_id", None)
    if pad_id is None:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else config.text_config.pad_token_id
    if pad_id is None:
        return None
    config.pad_token_id = pad_id
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_id)
    tokenizer.padding_side = "right"
    return pad_id


def _max_tokens(tokenizer, config) -> int:
    """The longest input the model accepts: its position table, or the tokenizer's limit if smaller and real."""
    limit = int(config.text_config.max_position_embeddings)
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < _SANE_MAX_LENGTH:
        limit = min(limit, tokenizer_limit)
    return limit


def _validate(request: ScoreRequest) -> None:
    if not request.frames:
        raise InvalidJobError("a video needs at least one frame")
    for index, frame in enumerate(request.frames):
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise InvalidJobError(f"frame {index} must be an H×W×3 uint8 RGB array, got {got}")


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

