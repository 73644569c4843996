"""The registry of VideoScore variants: which checkpoints we know and how each one must be driven.

A job names its model by hub id (``TIGER-Lab/VideoScore-v1.1``) or by a local checkpoint folder inside the
operator's model roots (``ModelPolicy``); each model has one name, the hub id or the folder's real path. A folder
built by ``videoscore model build-stand-in`` carries a ``videoscore.json`` that says which variant it
imitates and that it is an untrained stand-in, so its scores are always labelled as such.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from videoscore.core.errors import UnknownModelError

if TYPE_CHECKING:
    from videoscore.core.settings import Settings

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

# Checked before a name touches the filesystem: longer names are refused, never handed to os.stat (ENAMETOOLONG).
# 500 is also the width of the jobs.model column, so a name that passes is a name that can be stored.
MAX_MODEL_NAME_CHARS = 500
MAX_MODEL_NAME_PART_CHARS = 255
_MAX_MARKER_BYTES = 64 * 1024


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to know to load and drive a model named by a job."""

    name: str  # the model's one name: the hub id, or the folder's real path (what a job stores, see ModelPolicy)
    source: str  # what from_pretrained receives: a hub id or a local folder
    variant: Variant
    stand_in: bool  # True for an untrained, randomly initialised checkpoint

    @property
    def num_frames(self) -> int:
        return self.variant.num_frames

    @property
    def label(self) -> str:
        return f"{self.name} (UNTRAINED STAND-IN: scores are meaningless)" if self.stand_in else self.name


@dataclass(frozen=True)
class ModelPolicy:
    """Which models a job may name: the registered hub ids, the operator's default model, and checkpoint folders
    inside the operator's model roots (after symlinks and ``..`` are resolved). Nothing else, and the refusal of a
    folder outside the roots reads the same whether or not it exists, so a job cannot probe the filesystem.

    Built from settings where a program starts (``ModelPolicy.of(settings)``); the default policy allows the
    registered hub ids only, with the hub's v1.1 as the default model.
    """

    default: str = DEFAULT_MODEL  # VIDEOSCORE_MODEL: a job naming no model gets it
    roots: tuple[str, ...] = ()  # VIDEOSCORE_MODEL_ROOTS

    @classmethod
    def of(cls, settings: Settings) -> ModelPolicy:
        return cls(default=settings.model, roots=tuple(settings.model_roots))

    def resolve(self, name: str | None) -> ModelSpec:
        """The spec of the model a job names (None or "": the default), or UnknownModelError.

        The spec's name is what the job stores: the normalised name, except that the default model keeps the
        operator's spelling of VIDEOSCORE_MODEL, which is what names the workers' queues (core.queueing).
        """
        if not name or name == self.default:
            return self._default_spec()
        _check_length(name)
        collapsed = _collapse_slashes(name)
        if collapsed == _collapse_slashes(self.default):
            return self._default_spec()
        if collapsed in VARIANTS:
            return resolve_model(collapsed)
        folders = _ROOT_FOLDER if self.roots else _NO_ROOTS
        folder = _real_path(name)
        if folder is None:
            raise UnknownModelError(_unknown_message(name, folders))
        if _collapse_slashes(self.default) not in VARIANTS and folder == _real_path(self.default):
            return self._default_spec()
        if not any(_is_within(folder, root) for root in self._real_roots()):
            raise UnknownModelError(_unknown_message(name, folders))
        return _resolve_folder(name, folder, folders)

    def _default_spec(self) -> ModelSpec:
        return replace(resolve_model(self.default), name=self.default)

    def _real_roots(self) -> list[str]:
        return [real for real in (_real_path(root) for root in self.roots) if real is not None]


def resolve_model(name: str) -> ModelSpec:
    """The spec of a model the operator names (VIDEOSCORE_MODEL, a CLI flag, a test's folder): a registered hub
    id or any local checkpoint folder. A job's model goes through ``ModelPolicy.resolve`` instead.

    Raises UnknownModelError, with a message that says what is wrong, for anything else.
    """
    _check_length(name)
    collapsed = _collapse_slashes(name)
    if collapsed in VARIANTS:
        return ModelSpec(name=collapsed, source=collapsed, variant=VARIANTS[collapsed], stand_in=False)
    folder = _real_path(name)
    if folder is None:
        raise UnknownModelError(_unknown_message(name, _ANY_FOLDER))
    return _resolve_folder(name, folder, _ANY_FOLDER)


def _resolve_folder(name: str, folder: str, folders: str) -> ModelSpec:
    """A checkpoint folder (a real path) with its config.json and the videoscore.json naming its variant."""
    path = Path(folder)
    try:
        is_checkpoint = path.is_dir() and (path / "config.json").is_file()
    except OSError:
        is_checkpoint = False
    if not is_checkpoint:
        raise UnknownModelError(_unknown_message(name, folders))
    meta = _read_marker(name, path / STAND_IN_MARKER)
    variant_id = meta.get("variant")
    if not isinstance(variant_id, str) or variant_id not in VARIANTS:
        known = ", ".join(sorted(VARIANTS))
        raise UnknownModelError(f"the {STAND_IN_MARKER} of model {_shown(name)} names unknown variant "
                                f"{_shown(variant_id)}; expected one of {known}")
    # Anything truthy marks a stand-in: labelling real scores "untrained" is the safe mistake.
    return ModelSpec(name=folder, source=folder, variant=VARIANTS[variant_id], stand_in=bool(meta.get("stand_in")))


def _read_marker(name: str, marker: Path) -> dict[str, object]:
    example = f"{{\"variant\": \"{DEFAULT_MODEL}\", \"stand_in\": false}}"
    try:
        if not marker.is_file():
            raise UnknownModelError(f"local checkpoint {_shown(name)} has no {STAND_IN_MARKER} naming its variant; "
                                    f"write one such as {example}")
        with marker.open("rb") as handle:
            raw = handle.read(_MAX_MARKER_BYTES + 1)
    except OSError as exc:
        raise UnknownModelError(f"the {STAND_IN_MARKER} of model {_shown(name)} cannot be read "
                                f"({exc.strerror or type(exc).__name__})") from None
    if len(raw) > _MAX_MARKER_BYTES:
        raise UnknownModelError(f"the {STAND_IN_MARKER} of model {_shown(name)} is larger than "
                                f"{_MAX_MARKER_BYTES // 1024} KiB")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise UnknownModelError(f"the {STAND_IN_MARKER} of model {_shown(name)} is not valid JSON; "
                                f"write one such as {example}") from None
    if not isinstance(meta, dict):
        raise UnknownModelError(f"the {STAND_IN_MARKER} of model {_shown(name)} must hold a JSON object such as "
                                f"{example}, not a {type(meta).__name__}")
    return meta


def _check_length(name: str) -> None:
    if len(name) > MAX_MODEL_NAME_CHARS or any(len(part) > MAX_MODEL_NAME_PART_CHARS for part in name.split("/")):
        raise UnknownModelError(f"model name {_shown(name)} is too long: at most {MAX_MODEL_NAME_CHARS} characters, "
                                f"{MAX_MODEL_NAME_PART_CHARS} between slashes")


def _collapse_slashes(name: str) -> str:
    """`a//b/` → `a/b`: the spellings of one hub id or folder that differ only in slashes."""
    collapsed = re.sub(r"/{2,}", "/", name)
    return collapsed.rstrip("/") or collapsed


def _real_path(name: str) -> str | None:
    """The folder a name points at, symlinks and `..` resolved (nothing needs to exist); None if it has no path."""
    if "\x00" in name:
        return None
    try:
        path = Path(name).expanduser()
    except RuntimeError:  # "~someone/…" where no such user exists
        path = Path(name)
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):
        return None


def _is_within(folder: str, root: str) -> bool:
    return folder == root or folder.startswith(root.rstrip(os.sep) + os.sep)


_ANY_FOLDER = f"a local checkpoint folder (config.json and {STAND_IN_MARKER})"
_ROOT_FOLDER = "a checkpoint folder inside the model roots (VIDEOSCORE_MODEL_ROOTS)"
_NO_ROOTS = "the default model (no model roots, VIDEOSCORE_MODEL_ROOTS, are configured)"


def _unknown_message(name: str, folders: str) -> str:
    # The same words whether the folder exists or not: a job must not learn what is on the host.
    known = ", ".join(sorted(VARIANTS))
    return f"unknown model {_shown(name)}: expected one of {known}, or {folders}"


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:100] + "…" + text[-19:]
