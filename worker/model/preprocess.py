"""Per-video preprocessing, done where the video was decoded so that the device's thread never waits for it.

A task thread turns its ``ScoreRequest`` (frames + prompt) into a ``PreparedRequest`` with
``Preprocessor.prepare``: the prompt's token ids, checked against the model's limits, and the video's pixels in
the compact form the model family collates on the device (Idefics2: the processor's resized frames, still
uint8; see ``videoscore.worker.model.idefics2.inputs``). That is the expensive, per-video part of what the
checkpoint's processor does, and it runs in parallel across cores, overlapped with the previous batch's forward.
The engine's thread then only collates a batch, copies it over and runs the forward (``Scorer.score_prepared``).

Nothing here touches the model: a ``Preprocessor`` loads the processor and the config alone, so a job can be
prepared for a model that is not on the device yet. The recipe (``videoscore.worker.model.recipes``) says how
each family does it; what reaches the model is bit-identical to the processor's output (tests/unit/test_inputs.py).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from transformers import PreTrainedConfig

from videoscore.core.errors import InvalidJobError, ModelLoadError, PromptTooLongError
from videoscore.core.variants import ModelSpec
from videoscore.worker.model.recipes import ScoringRecipe, recipe_for

# Tokenizers without a real limit report a huge sentinel (int(1e30)); anything above this is "no limit".
_SANE_MAX_LENGTH = 1_000_000


@dataclass(frozen=True)
class ScoreRequest:
    """One video to score: its sampled frames (H×W×3 uint8 RGB, in temporal order) and its text prompt."""

    frames: list[np.ndarray]
    prompt: str


@dataclass(frozen=True)
class PreparedRequest:
    """One video, ready for a batch: what the engine queues instead of the frames themselves.

    ``inputs`` is the family's own per-video form (the scorer of the same kind reads it); ``shape_key`` is equal
    for two requests exactly when batching them pads neither one's pixels, so the engine groups by it.
    """

    prompt: str
    num_frames: int
    input_ids: list[int]
    inputs: Any
    shape_key: tuple[int, ...]
    prepare_s: float


@runtime_checkable
class PreprocessorProtocol(Protocol):
    """What a task thread asks of a model's preprocessing. Thread-safe; never touches the device."""

    @property
    def max_tokens(self) -> int:
        """The longest input, prompt plus frames, in tokens, that the model accepts."""
        ...

    def check_prompt(self, prompt: str, num_frames: int | None = None) -> None:
        """Raise a PermanentError if ``prompt`` with ``num_frames`` frames (default: the variant's) cannot be scored."""
        ...

    def prepare(self, request: ScoreRequest) -> PreparedRequest:
        """The request as a batch member; raises a PermanentError for a request the model cannot take."""
        ...


class Preprocessor:
    """A checkpoint's processor and token limits: prepares requests in the calling thread (a
    ``PreprocessorProtocol``). Build it with ``Preprocessor.load``."""

    def __init__(self, spec: ModelSpec, recipe: ScoringRecipe, processor: Any, config: PreTrainedConfig, *,
                 pin_memory: bool = False) -> None:
        self.spec = spec
        self.recipe = recipe
        self.processor = processor
        self.pin_memory = pin_memory
        self.tokenizer = recipe.tokenizer(processor)
        self.pad_token_id = align_padding(self.tokenizer, config)
        self.max_tokens = _max_tokens(self.tokenizer, config)
        # Fast tokenizers change their padding/truncation state per call and refuse concurrent use ("Already
        # borrowed"): tokenizing is cheap, so it is serialised; the pixels are not.
        self._tokenizer_lock = threading.Lock()

    @classmethod
    def load(cls, spec: ModelSpec, *, pin_memory: bool = False) -> Preprocessor:
        """Load ``spec.source``'s processor and config (hub id or local folder); no weights.

        ``pin_memory``: put prepared pixels in page-locked memory, for a CUDA device to copy without blocking.
        """
        recipe = recipe_for(spec.variant.family, num_frames=spec.num_frames)
        config_class = recipe.model_class.config_class
        assert config_class is not None, "every recipe's model class names its config class"
        try:
            processor = recipe.load_processor(spec.source)
            config = config_class.from_pretrained(spec.source)
        except Exception as exc:  # noqa: BLE001 - any failure to load is the checkpoint's problem
            raise ModelLoadError(f"could not load {spec.label}: {exc}") from exc
        return cls(spec, recipe, processor, config, pin_memory=pin_memory)

    def check_prompt(self, prompt: str, num_frames: int | None = None) -> None:
        """Raise before any decoding if ``prompt`` cannot be scored with ``num_frames`` frames.

        PromptTooLongError when prompt + image tokens exceed what the model accepts (``max_tokens``);
        InvalidJobError when the prompt spells the pad token, which would move the scored position.
        ``num_frames`` defaults to the variant's frame count.
        """
        frames = num_frames if num_frames is not None else self.spec.num_frames
        with self._tokenizer_lock:
            input_ids = self.recipe.prompt_ids(self.processor, prompt, frames)
        self.check_tokens(list(input_ids), frames)

    def prepare(self, request: ScoreRequest) -> PreparedRequest:
        started = time.perf_counter()
        validate(request)
        num_frames = len(request.frames)
        self.check_prompt(request.prompt, num_frames)  # before the pixels' work: a refusal costs no resize
        inputs, shape_key = self.recipe.prepare_pixels(self.processor, request.frames, pin_memory=self.pin_memory)
        with self._tokenizer_lock:
            input_ids = self.recipe.input_ids(self.processor, request.prompt, num_frames, inputs)
        self.check_tokens(input_ids, num_frames)
        return PreparedRequest(prompt=request.prompt, num_frames=num_frames, input_ids=input_ids,
                               inputs=inputs, shape_key=shape_key, prepare_s=time.perf_counter() - started)

    def check_tokens(self, input_ids: list[int], num_frames: int) -> None:
        if len(input_ids) > self.max_tokens:
            raise PromptTooLongError(
                f"prompt plus {num_frames} frame{'s' if num_frames != 1 else ''} needs {len(input_ids)} tokens;"
                f" the model accepts {self.max_tokens}"
            )
        if self.pad_token_id is not None and self.pad_token_id in input_ids:
            token = self.tokenizer.convert_ids_to_tokens(self.pad_token_id)
            raise InvalidJobError(f"prompt contains the reserved token {token!r}")


def validate(request: ScoreRequest) -> None:
    if not request.frames:
        raise InvalidJobError("a video needs at least one frame")
    for index, frame in enumerate(request.frames):
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise InvalidJobError(f"frame {index} must be an H×W×3 uint8 RGB array, got {got}")


def align_padding(tokenizer: Any, config: PreTrainedConfig) -> int | None:
    """Make tokenizer padding and the model's pooling agree on one pad id, and pad on the right.

    A checkpoint without a top-level pad id pools the last position, which equals mantis' first-pad rule on
    unpadded rows; giving it the tokenizer's pad id keeps single-video scores unchanged and lets batches work.
    Sets ``config.pad_token_id``; the Scorer gives the loaded model's config the same id.
    """
    pad_id = getattr(config, "pad_token_id", None)
    if pad_id is None:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else config.text_config.pad_token_id
    if pad_id is None:
        return None
    config.pad_token_id = pad_id
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_id)
    tokenizer.padding_side = "right"
    return int(pad_id)


def _max_tokens(tokenizer: Any, config: PreTrainedConfig) -> int:
    """The longest input the model accepts: its position table, or the tokenizer's limit if smaller and real."""
    limit = int(config.text_config.max_position_embeddings)
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < _SANE_MAX_LENGTH:
        limit = min(limit, tokenizer_limit)
    return limit
