"""The registry of VideoScore variants: which checkpoints we know and how each one must be driven.

A job names its model by hub id (``TIGER-Lab/VideoScore-v1.1``) or by a local checkpoint folder. A folder
built by ``videoscore model build-stand-in`` carries a ``videoscore.json`` that says which variant it
imitates and that it is an untrained stand-in, so its scores are always labelled as such.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from videoscore.core.errors import UnknownModelError

Family = Literal["idefics2", "qwen2_vl"]

# The five regression outputs, in the order of the model's logits.
ASPECTS: tuple[str, ...] = (
    "visual_quality",
    "temporal_consistency",
    "dynamic_degree",
    "text_to_video_alignment",
    "factual_consistency",
)
STAND_IN_MARKER = "videoscore.json"


@dataclass(frozen=True)
class Variant:
    """One published VideoScore checkpoint and its scoring recipe."""

    hub_id: str
    family: Family
    num_frames: int
    description: str


VARIANTS: dict[str, Variant] = {
    v.hub_id: v
    for v in (
        Variant("TIGER-Lab/VideoScore", "idefics2", 16, "Mantis-8B-Idefics2, regression, trained on VideoFeedback"),
        Variant("TIGER-Lab/VideoScore-anno-only", "idefics2", 16, "as VideoScore, without the real videos"),
        Variant("TIGER-Lab/VideoScore-v1.1", "idefics2", 48, "better text-to-video alignment; 48 frames"),
        # Samples at 8 fps (worker.qwen2_vl_recipe); 48 is only a typical count, used for prompt-length checks.
        Variant("TIGER-Lab/VideoScore-Qwen2-VL", "qwen2_vl", 48, "Qwen2-VL-7B backbone, regression head; 8 fps"),
    )
}
DEFAULT_MODEL = "TIGER-Lab/VideoScore-v1.1"


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to know to load and drive a model named by a job."""

    name: str  # what the job said
    source: str  # what from_pretrained receives: a hub id or a local folder
    variant: Variant
    stand_in: bool  # True for an untrained, randomly initialised checkpoint

    @property
    def num_frames(self) -> int:
        return self.variant.num_frames

    @property
    def label(self) -> str:
        return f"{self.name} (UNTRAINED STAND-IN: scores are meaningless)" if self.stand_in else self.name


def resolve_model(name: str) -> ModelSpec:
    """Map a job's model name to a spec, or raise UnknownModelError with a helpful message."""
    if name in VARIANTS:
        return ModelSpec(name=name, source=name, variant=VARIANTS[name], stand_in=False)
    try:
        folder = Path(name).expanduser()
    except RuntimeError:  # "~someone/…" where no such user exists: not a folder we can find
        folder = Path(name)
    if folder.is_dir() and (folder / "config.json").is_file():
        return _resolve_local_folder(name, folder)
    known = ", ".join(sorted(VARIANTS))
    raise UnknownModelError(f"unknown model {name!r}: expected one of {known}, or a local checkpoint folder")


def _resolve_local_folder(name: str, folder: Path) -> ModelSpec:
    marker = folder / STAND_IN_MARKER
    if not marker.is_file():
        raise UnknownModelError(
            f"local checkpoint {name!r} has no {STAND_IN_MARKER} naming its variant; "
            f"write one such as {{\"variant\": \"{DEFAULT_MODEL}\", \"stand_in\": false}}"
        )
    meta = json.loads(marker.read_text())
    variant_id = meta.get("variant")
    if variant_id not in VARIANTS:
        raise UnknownModelError(f"{marker} names unknown variant {variant_id!r}")
    return ModelSpec(name=name, source=str(folder), variant=VARIANTS[variant_id], stand_in=bool(meta.get("stand_in")))
