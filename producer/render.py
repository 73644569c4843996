"""Terminal views of jobs (rich tables). Scores from an untrained stand-in are always labelled as such."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from videoscore.core.variants import ASPECTS
from videoscore.db.queries import GroupStats
from videoscore.db.records import JobRecord
from videoscore.producer.client import Client

SHORT = {
    "visual_quality": "visual",
    "temporal_consistency": "temporal",
    "dynamic_degree": "dynamic",
    "text_to_video_alignment": "t2v align",
    "factual_consistency": "factual",
}
STAND_IN_WARNING = "UNTRAINED STAND-IN MODEL: these scores come from random weights and mean nothing"


def results_table(records: Sequence[JobRecord], *, title: str = "VideoScore results") -> Table:
    """One row per job: where the video is, its state, the five scores (3 decimals) or why it failed."""
    stand_ins = {r.model for r in records if r.stand_in_model}
    models = sorted(
        {_short_model(r.model) + (" (untrained stand-in)" if r.model in stand_ins else "") for r in records}
    )
    title = f"{title}\nmodel: {', '.join(models) or '-'}"
    if any(r.stand_in_model for r in records):
        title = f"{title}\n[bold red]{STAND_IN_WARNING}[/]"
    table = Table(title=title)
    table.add_column("job", no_wrap=True)
    table.add_column("video", overflow="fold")
    table.add_column("status", no_wrap=True)
    for aspect in ASPECTS:
        table.add_column(SHORT[aspect], justify="right", no_wrap=True)
    table.add_column("frames", justify="right")
    table.add_column("error", overflow="fold")
    for r in records:
        scores = r.scores
        cells = [f"{scores[a]:.3f}" for a in ASPECTS] if scores else ["-"] * len(ASPECTS)
        error = f"{r.error_kind}: {r.error_message}" if r.error_kind and r.status != "succeeded" else ""
        table.add_row(r.id[:8], r.video_uri, r.status, *cells, str(r.num_frames or "-"), error)
    return table


def _short_model(model: str) -> str:
    return model.rstrip("/").split("/")[-1]


def wait_with_progress(
    client: Client, job_ids: list[str], *, console: Console, timeout_s: float | None
) -> list[JobRecord]:
    """Client.wait with a progress bar of finished jobs."""
    columns = (TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("jobs", total=len(job_ids))
        return client.wait(
            job_ids, timeout_s=timeout_s, on_progress=lambda done, _total: progress.update(bar, completed=done)
        )


def aggregates_table(groups: Sequence["GroupStats"], *, by: str) -> Table:
    """One row per batch or model: scored jobs, then mean and p10 / p50 / p90 of each aspect."""
    title = f"VideoScore aggregates by {by} (succeeded jobs)"
    if any(g.stand_in for g in groups):
        title = f"{title}\n[bold red]{STAND_IN_WARNING}[/]"
    table = Table(title=title)
    table.add_column(by, overflow="fold")
    table.add_column("scored", justify="right")
    for aspect in ASPECTS:
        table.add_column(f"{SHORT[aspect]}\nmean (p10/p50/p90)", justify="right")
    for g in groups:
        cells = []
        for aspect in ASPECTS:
            s = g.aspects[aspect]
            cells.append("-" if s.mean is None else f"{s.mean:.3f}\n({s.p10:.2f}/{s.p50:.2f}/{s.p90:.2f})")
        name = (g.group or "-") + (" (stand-in)" if g.stand_in else "")
        table.add_row(name, str(g.scored), *cells)
    return table
