"""Per-family scoring recipes: the one place that knows how each VideoScore family is loaded and fed.

A recipe says which model class a checkpoint loads into, which processor goes with it, how a video's frames are
sampled, how one video becomes a batch member in its task thread (``prepare_pixels``, ``input_ids``) and how a
batch of them becomes model inputs on the device (``collate``). ``videoscore.worker.model.scorer`` and
``videoscore.worker.service.pipeline`` ask ``recipe_for(family)`` and otherwise do not branch on the family.

* ``idefics2`` (VideoScore, -anno-only, -v1.1): the model card's recipe -- N frames by the card's
  ``np.arange`` rule, one ``<image>`` per frame in the regression prompt, the checkpoint's Idefics2 processor.
* ``qwen2_vl`` (VideoScore-Qwen2-VL): ``examples/run_videoscore_qwen2_vl.py`` -- frames at 8 fps through
  qwen-vl-utils' sampling and resizing, the chat template, the Qwen2-VL image processor's video path
  (``videoscore.worker.model.qwen2_vl.recipe``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from transformers import AutoProcessor, PreTrainedModel

from videoscore.core.variants import Family
from videoscore.worker.model.idefics2 import inputs as idefics2_inputs
from videoscore.worker.model.idefics2.inputs import Idefics2Video
from videoscore.worker.model.idefics2.modeling import VideoScoreForSequenceClassification
from videoscore.worker.model.idefics2.modeling import default_attn_implementation as idefics2_default_attn
from videoscore.worker.model.prompt import build_eval_prompt
from videoscore.worker.model.qwen2_vl import recipe as qwen2_vl_recipe
from videoscore.worker.model.qwen2_vl.modeling import VideoScoreQwen2VLForSequenceClassification
from videoscore.worker.video.frames import DEFAULT_MAX_DECODE_BYTES, MemoryBudget, SampledVideo, sample_video

if TYPE_CHECKING:
    from videoscore.worker.model.preprocess import PreparedRequest


class ScoringRecipe:
    """What differs between VideoScore families. Subclasses set the class attributes and the four methods."""

    family: ClassVar[Family]
    model_class: ClassVar[type[PreTrainedModel]]
    # Copies of each sampled frame's bytes a job holds at its peak, the frames themselves included (sampling,
    # then ``prepare_pixels``): what the memory budget multiplies frames by. Measured, see the subclasses.
    frame_copies: ClassVar[float]

    def load_processor(self, source: str) -> Any:
        raise NotImplementedError

    def tokenizer(self, processor: Any) -> Any:
        return processor.tokenizer

    def default_attn_implementation(self) -> str:
        return "sdpa" if getattr(self.model_class, "_supports_sdpa", False) else "eager"

    def prompt_ids(self, processor: Any, prompt: str, num_frames: int) -> list[int]:
        """The tokens ``prompt`` takes with ``num_frames`` frames, or a lower bound where that needs the frames."""
        raise NotImplementedError

    def prepare_pixels(self, processor: Any, frames: Sequence[np.ndarray], *,
                       pin_memory: bool) -> tuple[Any, tuple[int, ...]]:
        """One video's pixels as the family collates them, and the shape key of its padding (task thread)."""
        raise NotImplementedError

    def input_ids(self, processor: Any, prompt: str, num_frames: int, pixels: Any) -> list[int]:
        """The video's input ids, unpadded, as the processor tokenizes them (``pixels`` from ``prepare_pixels``)."""
        raise NotImplementedError

    def value_table(self, processor: Any) -> torch.Tensor | None:
        """What each uint8 value becomes on the device (``collate``'s ``table``), or None where it is not used."""
        return None

    def collate(self, prepared: Sequence[PreparedRequest], *, pad_token_id: int, table: torch.Tensor | None,
                device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """A batch of prepared videos as model inputs on ``device``, right-padded, pixels in ``dtype``."""
        raise NotImplementedError

    def padded_fraction(self, prepared: Sequence[PreparedRequest]) -> float:
        """The share of the batch's pixel positions that are padding."""
        return 0.0

    def sample(
        self,
        path: Path,
        *,
        num_frames: int | None,
        max_pixels: int | None,
        max_decode_bytes: int | None = DEFAULT_MAX_DECODE_BYTES,
    ) -> SampledVideo:
        """Read the frames this family scores; ``num_frames`` overrides the recipe's count when given.

        Refuses with ``VideoTooLargeError`` before decoding when a frame is over ``max_pixels`` or the frames,
        ``frame_copies`` times over, would not fit ``max_decode_bytes`` (None: no budget).
        """
        raise NotImplementedError

    def budget(self, max_decode_bytes: int | None) -> MemoryBudget:
        return MemoryBudget(max_bytes=max_decode_bytes, copies=self.frame_copies)


class Idefics2Recipe(ScoringRecipe):
    family = "idefics2"
    model_class = VideoScoreForSequenceClassification
    # Measured (CPU, the checkpoints' processor, PIL backend): peak memory of sampling + preprocessing grows by 4.0-5.0x
    # the frames' bytes per extra byte of frame (8 frames at 720p..4K: the frames, their PIL copies, the
    # processor's arrays before it resizes to 980 px), measured when the processor also made float32 output;
    # what a job now holds on top is its prepared copy, uint8 at the resized size (at most 980 x 980 x 3, ~2.9 MB
    # a frame; 1.6 MB for 16:9), counted as the model's.
    frame_copies = 5.0

    def __init__(self, num_frames: int = 48) -> None:
        self.num_frames = num_frames

    def load_processor(self, source: str) -> Any:
        # The PIL backend is what mantis' transformers used; the torchvision one resizes differently.
        return AutoProcessor.from_pretrained(source, backend="pil")

    def default_attn_implementation(self) -> str:
        return idefics2_default_attn()

    def prompt_ids(self, processor: Any, prompt: str, num_frames: int) -> list[int]:
        return list(processor(text=build_eval_prompt(prompt, num_frames))["input_ids"][0])

    def prepare_pixels(self, processor: Any, frames: Sequence[np.ndarray], *,
                       pin_memory: bool) -> tuple[Idefics2Video, tuple[int, ...]]:
        video = idefics2_inputs.prepare_video(processor.image_processor, frames, pin_memory=pin_memory)
        return video, video.padded_shape

    def input_ids(self, processor: Any, prompt: str, num_frames: int, pixels: Any) -> list[int]:
        return self.prompt_ids(processor, prompt, num_frames)

    def value_table(self, processor: Any) -> torch.Tensor:
        return idefics2_inputs.value_table(processor.image_processor)

    def collate(self, prepared: Sequence[PreparedRequest], *, pad_token_id: int, table: torch.Tensor | None,
                device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        assert table is not None, "Idefics2 collates through the value table"
        tensors = pad_input_ids([p.input_ids for p in prepared], pad_token_id, device)
        tensors.update(idefics2_inputs.collate_videos([p.inputs for p in prepared], table, device=device, dtype=dtype))
        return tensors

    def padded_fraction(self, prepared: Sequence[PreparedRequest]) -> float:
        return idefics2_inputs.padded_fraction([p.inputs for p in prepared])

    def sample(
        self,
        path: Path,
        *,
        num_frames: int | None,
        max_pixels: int | None,
        max_decode_bytes: int | None = DEFAULT_MAX_DECODE_BYTES,
    ) -> SampledVideo:
        return sample_video(
            path, num_frames or self.num_frames, max_pixels=max_pixels, budget=self.budget(max_decode_bytes)
        )


class Qwen2VLRecipe(ScoringRecipe):
    family = "qwen2_vl"
    model_class = VideoScoreQwen2VLForSequenceClassification
    # Of the frames *kept* (resized to qwen-vl-utils' size while decoding where that is smaller, see
    # qwen2_vl.recipe). Measured (CPU): sampling + preprocessing peak at 2.2-3.0x the kept frames' bytes (64-768 frames,
    # 360p-1080p), with a processor that adds little; the checkpoint's own processor then scales each frame to
    # its 256-640 x 28 x 28 pixels, kept as uint8 until the device (about 1.9 MB a frame, 1.5 GB at 768 frames; the
    # float32 patches, 4x that, exist only on the device), counted as the model's.
    frame_copies = 3.0

    def load_processor(self, source: str) -> qwen2_vl_recipe.Qwen2VLInputs:
        return qwen2_vl_recipe.Qwen2VLInputs.from_pretrained(source)

    def prompt_ids(self, processor: qwen2_vl_recipe.Qwen2VLInputs, prompt: str, num_frames: int) -> list[int]:
        # The video's token count depends on its size, known only after decoding: count the text alone here;
        # Scorer.score checks the real length.
        return processor.text_ids(prompt)

    def prepare_pixels(self, processor: qwen2_vl_recipe.Qwen2VLInputs, frames: Sequence[np.ndarray], *,
                       pin_memory: bool) -> tuple[qwen2_vl_recipe.VideoPatches, tuple[int, ...]]:
        patches = processor.video_patches(frames, pin_memory=pin_memory)
        return patches, patches.grid

    def input_ids(self, processor: qwen2_vl_recipe.Qwen2VLInputs, prompt: str, num_frames: int,
                  pixels: Any) -> list[int]:
        return processor.video_ids(prompt, pixels.grid)

    def collate(self, prepared: Sequence[PreparedRequest], *, pad_token_id: int, table: torch.Tensor | None,
                device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        tensors = pad_input_ids([p.input_ids for p in prepared], pad_token_id, device)
        tensors.update(qwen2_vl_recipe.collate_patches([p.inputs for p in prepared], device=device, dtype=dtype))
        return tensors

    def sample(
        self,
        path: Path,
        *,
        num_frames: int | None,
        max_pixels: int | None,
        max_decode_bytes: int | None = DEFAULT_MAX_DECODE_BYTES,
    ) -> SampledVideo:
        return qwen2_vl_recipe.sample_video(
            path, nframes=num_frames, max_pixels=max_pixels, budget=self.budget(max_decode_bytes)
        )


def pad_input_ids(rows: Sequence[Sequence[int]], pad_token_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """``input_ids`` right-padded with ``pad_token_id`` and the ``attention_mask`` (1 on each row's own tokens), as a
    tokenizer pads a batch with ``padding="longest"`` on the right."""
    longest = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[index, : len(row)] = 1
    return {"input_ids": input_ids.to(device, non_blocking=True),
            "attention_mask": attention_mask.to(device, non_blocking=True)}


def recipe_for(family: Family, *, num_frames: int = 48) -> ScoringRecipe:
    """The recipe of a variant family (``Variant.family``); ``num_frames`` is the variant's count (Idefics2)."""
    if family == "idefics2":
        return Idefics2Recipe(num_frames)
    if family == "qwen2_vl":
        return Qwen2VLRecipe()
    raise ValueError(f"no scoring recipe for model family {family!r}")
