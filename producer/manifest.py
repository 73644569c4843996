"""Manifests: many jobs in one file, one row per video, for `videoscore submit manifest.jsonl|.csv`.

JSON Lines: one object per line with the job fields (`video_uri`, `prompt`, and optionally `model`, `batch`,
`tags`, `idempotency_key`, `priority`, `force`); blank lines are skipped. CSV: a header row naming the same
columns; `tags` is a JSON object, or give one column per tag as `tag.<name>`; empty cells mean "not given".
Every row is validated before anything is submitted, and each bad row is reported by its line number.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from videoscore.core.errors import InvalidJobError
from videoscore.core.jobspec import JobRequest, validate_job
from videoscore.core.variants import ModelPolicy

SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
TRUE = {"true", "1", "yes", "y"}
FALSE = {"false", "0", "no", "n", ""}


class ManifestError(InvalidJobError):
    """The manifest cannot be read."""

    kind = "invalid_manifest"


@dataclass(frozen=True)
class RowError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class Manifest:
    path: Path
    requests: list[JobRequest] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # the line each request came from
    errors: list[RowError] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.requests) + len(self.errors)


def is_manifest(target: str) -> bool:
    """A path ending in .jsonl, .ndjson or .csv (not a video URI) names a manifest."""
    return "://" not in target and Path(target).suffix.lower() in SUFFIXES


def read_manifest(path: Path, *, max_prompt_chars: int, defaults: Mapping[str, Any] | None = None,
                  models: ModelPolicy = ModelPolicy()) -> Manifest:
    """Parse and validate every row; rows lacking a field take it from `defaults` (batch, model, priority…), and
    rows naming no model then get `models.default` (pass `ModelPolicy.of(settings)`)."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ManifestError(f"{path}: a manifest ends in .jsonl, .ndjson or .csv")
    if not path.is_file():
        raise ManifestError(f"{path}: no such file")
    defaults = {k: v for k, v in (defaults or {}).items() if v is not None}
    manifest = Manifest(path)
    rows = _jsonl_rows(path) if kind == "jsonl" else _csv_rows(path)
    for line, row in rows:
        if isinstance(row, RowError):
            manifest.errors.append(row)
            continue
        try:
            request = validate_job({**defaults, **row}, max_prompt_chars=max_prompt_chars, models=models)
        except InvalidJobError as exc:
            manifest.errors.append(RowError(line, exc.message))
            continue
        manifest.requests.append(request)
        manifest.lines.append(line)
    if manifest.rows == 0:
        raise ManifestError(f"{path}: no rows")
    return manifest


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    with path.open(encoding="utf-8", errors="surrogateescape") as lines:
        for number, text in enumerate(lines, 1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except ValueError as exc:
                yield number, RowError(number, f"not valid JSON: {exc}")
                continue
            if not isinstance(row, dict):
                yield number, RowError(number, f"expected a JSON object, got {type(row).__name__}")
                continue
            yield number, row


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            return
        start = reader.line_num + 1
        for record in reader:
            line, start = start, reader.line_num + 1  # a quoted cell may span lines: report where the row began
            if None in record:
                yield line, RowError(line, f"{len(record[None])} more cells than the header has columns")  # type: ignore[index]
                continue
            try:
                yield line, _csv_job(record)
            except ValueError as exc:
                yield line, RowError(line, str(exc))


def _csv_job(record: dict[str, str]) -> dict[str, Any]:
    job: dict[str, Any] = {}
    tags: dict[str, str] = {}
    for column, cell in record.items():
        column = column.strip()
        if cell is None or cell == "":
            continue
        if column.startswith("tag."):
            tags[column[4:]] = cell
        elif column == "tags":
            try:
                parsed = json.loads(cell)
            except ValueError:
                raise ValueError(f"tags: not a JSON object: {cell[:80]!r}") from None
            if not isinstance(parsed, dict):
                raise ValueError("tags: expected a JSON object such as {\"run\": \"42\"}")
            tags.update(parsed)
        elif column == "force":
            if cell.strip().lower() not in TRUE | FALSE:
                raise ValueError(f"force: expected true or false, got {cell!r}")
            job["force"] = cell.strip().lower() in TRUE
        else:
            job[column] = cell
    if tags:
        job["tags"] = tags
    return job
