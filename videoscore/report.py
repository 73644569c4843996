"""`videoscore report`: an HTML page (plus PNG charts) that shows a batch's scores to people.

Per-aspect score distributions, a comparison across batches or across models within the batch (means with
p10–p90 ranges, from db.queries.aggregate), the lowest-scoring videos with their prompts and a strip of the
frames the model saw, and the failures by kind. Charts are matplotlib (Agg); the page is a Jinja2 template.

Frame strips fetch each shown video with the worker's own code (worker.storage.VideoStore, then
worker.frames.read_frames at the job's stored frame indices), under the worker's limits: the same file:// roots,
locked-down demuxers, pixel limit and memory budget. Without the worker extra the report says so
and has no strips. Scores from an untrained stand-in model are labelled as such on the page and the charts.
"""

from __future__ import annotations

import html
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from videoscore.core.variants import ASPECTS
from videoscore.db.queries import GroupStats, JobFilter
from videoscore.db.records import JobRecord
from videoscore.producer.client import Client
from videoscore.producer.render import STAND_IN_WARNING

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
LABELS = {
    "visual_quality": "Visual quality",
    "temporal_consistency": "Temporal consistency",
    "dynamic_degree": "Dynamic degree",
    "text_to_video_alignment": "Text-to-video alignment",
    "factual_consistency": "Factual consistency",
}
PALETTE = ["#2563eb", "#f97316", "#16a34a", "#9333ea", "#dc2626", "#0891b2"]
STRIP_FRAMES = 8
THUMB_HEIGHT = 72


@dataclass
class Group:
    name: str
    records: list[JobRecord]
    stats: GroupStats | None
    colour: str

    @property
    def scored(self) -> list[JobRecord]:
        return [r for r in self.records if r.scores is not None]


@dataclass
class WorstVideo:
    record: JobRecord
    mean: float
    strip: str | None = None  # file name of the frame strip, relative to the report folder
    strip_note: str | None = None  # why there is no strip


@dataclass
class Report:
    title: str
    batch: str
    comparing: str  # "", "batches" or "models"
    groups: list[Group]
    counts: dict[str, int]
    total: int
    stand_in: bool
    worst: list[WorstVideo]
    failures: list[tuple[str, int, str]]
    charts: dict[str, str] = field(default_factory=dict)
    thumbnails_note: str | None = None
    generated_at: str = ""


def build_report(client: Client, *, batch: str, out: Path, compare_batches: Sequence[str] = (),
                 compare_models: Sequence[str] = (), worst: int = 8, thumbnails: bool = True) -> Path:
    """Write `out/index.html` and its PNGs; returns the HTML file's path."""
    if compare_batches and compare_models:
        raise ValueError("compare with other batches or with other models, not both")
    records = list(client.iter_jobs(JobFilter(batch=batch)))
    if not records:
        raise ValueError(f"no job belongs to batch {batch!r}")
    out.mkdir(parents=True, exist_ok=True)
    groups = _groups(client, batch, records, compare_batches, compare_models)
    counts = Counter(r.status for r in records)
    report = Report(
        title=f"VideoScore report: {batch}",
        batch=batch,
        comparing="batches" if compare_batches else "models" if compare_models else "",
        groups=groups,
        counts=dict(counts.most_common()),
        total=len(records),
        stand_in=any(r.stand_in_model for g in groups for r in g.records),
        worst=_worst(records, worst),
        failures=_failures(records),
        generated_at=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )
    report.charts = _charts(report, out)
    if thumbnails and report.worst:
        report.thumbnails_note = _frame_strips(client, report.worst, out)
    elif not thumbnails:
        report.thumbnails_note = "frame strips were turned off (--no-thumbnails)"
    index = out / "index.html"
    index.write_text(_render(report), encoding="utf-8")
    return index


def _groups(client: Client, batch: str, records: list[JobRecord], compare_batches: Sequence[str],
            compare_models: Sequence[str]) -> list[Group]:
    if compare_models:
        stats = {g.group: g for g in client.aggregate("model", JobFilter(batch=batch))}
        wanted = list(dict.fromkeys(compare_models))
        missing = [m for m in wanted if m not in {r.model for r in records}]
        if missing:
            raise ValueError(f"batch {batch!r} has no job scored by {', '.join(missing)}")
        return [Group(m, [r for r in records if r.model == m], stats.get(m), PALETTE[i % len(PALETTE)])
                for i, m in enumerate(wanted)]
    groups = [Group(batch, records, _batch_stats(client, batch), PALETTE[0])]
    for i, other in enumerate(dict.fromkeys(compare_batches), 1):
        other_records = list(client.iter_jobs(JobFilter(batch=other)))
        if not other_records:
            raise ValueError(f"no job belongs to batch {other!r}")
        groups.append(Group(other, other_records, _batch_stats(client, other), PALETTE[i % len(PALETTE)]))
    return groups


def _batch_stats(client: Client, batch: str) -> GroupStats | None:
    found = client.aggregate("batch", JobFilter(batch=batch))
    return found[0] if found else None


def _mean_score(record: JobRecord) -> float:
    scores = record.scores or {}
    return sum(scores.values()) / len(scores) if scores else float("inf")


def _worst(records: list[JobRecord], count: int) -> list[WorstVideo]:
    scored = sorted((r for r in records if r.scores is not None), key=_mean_score)
    return [WorstVideo(r, _mean_score(r)) for r in scored[:count]]


def _failures(records: list[JobRecord]) -> list[tuple[str, int, str]]:
    failed = [r for r in records if r.status == "failed"]
    kinds = Counter(r.error_kind or "unknown" for r in failed)
    example = {r.error_kind or "unknown": r.error_message or "" for r in reversed(failed)}
    return [(kind, n, example[kind]) for kind, n in kinds.most_common()]


# --- charts ------------------------------------------------------------------------------------------------


def _charts(report: Report, out: Path) -> dict[str, str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: the report has no charts (pip install 'videoscore-queue[report]')")
        return {}
    plt.rcParams.update({"font.family": "DejaVu Sans", "font.size": 10, "axes.spines.top": False,
                         "axes.spines.right": False, "axes.titleweight": "bold", "axes.titlesize": 11})
    charts = {"distributions": _distribution_chart(plt, report, out / "distributions.png")}
    if len(report.groups) > 1 or report.groups[0].stats:
        charts["comparison"] = _comparison_chart(plt, report, out / "comparison.png")
    return {name: path.name for name, path in charts.items() if path is not None}


def _distribution_chart(plt: Any, report: Report, path: Path) -> Path | None:
    if not any(g.scored for g in report.groups):
        return None
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(ASPECTS), figsize=(15, 3.2), sharey=False)
    for ax, aspect in zip(axes, ASPECTS, strict=True):
        values_by_group = [[r.scores[aspect] for r in g.scored] for g in report.groups]  # type: ignore[index]
        everything = [v for vs in values_by_group for v in vs]
        low, high = min(everything), max(everything)
        pad = (high - low) * 0.05 or 0.5
        bins = [low - pad + i * (high - low + 2 * pad) / 20 for i in range(21)]
        for group, values in zip(report.groups, values_by_group, strict=True):
            if not values:
                continue
            ax.hist(values, bins=bins, color=group.colour, alpha=0.35 if len(report.groups) > 1 else 0.6,
                    label=group.name, edgecolor=group.colour, linewidth=1.0)
            mean = sum(values) / len(values)
            ax.axvline(mean, color=group.colour, linestyle="--", linewidth=1.4)
        ax.set_title(LABELS[aspect])
        ax.set_xlabel("score")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        ax.ticklabel_format(axis="x", useOffset=False)
        ax.grid(axis="y", alpha=0.25)
    axes[0].set_ylabel("videos")
    if len(report.groups) > 1:
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, frameon=False, fontsize=9, loc="upper right", ncols=len(names))
    suptitle = "Score distributions (dashed line: mean)"
    if report.stand_in:
        suptitle += "  —  STAND-IN MODEL: random-weight scores, meaningless"
    fig.suptitle(suptitle, x=0.01, ha="left", fontsize=11, color="#b91c1c" if report.stand_in else "#111827")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _comparison_chart(plt: Any, report: Report, path: Path) -> Path | None:
    groups = [g for g in report.groups if g.stats and g.stats.scored]
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(15, 3.4))
    width = 0.8 / len(groups)
    for i, group in enumerate(groups):
        assert group.stats is not None
        xs = [a + (i - (len(groups) - 1) / 2) * width for a in range(len(ASPECTS))]
        stats = [group.stats.aspects[a] for a in ASPECTS]
        means = [s.mean or 0.0 for s in stats]
        lower = [max(0.0, (s.mean or 0) - (s.p10 or 0)) for s in stats]
        upper = [max(0.0, (s.p90 or 0) - (s.mean or 0)) for s in stats]
        ax.bar(xs, means, width=width * 0.92, color=group.colour, alpha=0.85,
               label=f"{group.name} (n={group.stats.scored})")
        ax.errorbar(xs, means, yerr=[lower, upper], fmt="none", ecolor="#111827", elinewidth=1, capsize=3)
        for x, m in zip(xs, means, strict=True):
            ax.annotate(f"{m:.2f}", (x, m), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
    ax.set_xticks(range(len(ASPECTS)), [LABELS[a] for a in ASPECTS])
    ax.set_ylabel("mean score (bar: p10–p90)")
    ax.grid(axis="y", alpha=0.25)
    ax.legend(frameon=False, fontsize=9, ncols=min(len(groups), 4), loc="upper left", bbox_to_anchor=(0, 1.18))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- frame strips ------------------------------------------------------------------------------------------


def _frame_strips(client: Client, worst: list[WorstVideo], out: Path) -> str | None:
    """Fill in each worst video's strip; returns a note for the page when strips are unavailable."""
    try:
        from PIL import Image

        from videoscore.worker.video.frames import MemoryBudget, read_frames
        from videoscore.worker.video.storage import VideoStore
    except ImportError as exc:
        return f"frame strips need the worker extra (pip install 'videoscore-queue[worker]'): {exc.name} is missing"
    settings = client.settings
    store = VideoStore(settings)
    budget = MemoryBudget(max_bytes=settings.max_decode_bytes)
    (out / "frames").mkdir(exist_ok=True)
    for item in worst:
        indices = item.record.frame_indices or []
        if not indices:
            item.strip_note = "no frame indices stored"
            continue
        step = max(1, len(indices) // STRIP_FRAMES)
        wanted = indices[::step][:STRIP_FRAMES]
        try:
            with store.fetch(item.record.video_uri) as fetched:
                frames = read_frames(fetched.path, wanted, max_pixels=settings.max_video_pixels, budget=budget)
        except Exception as exc:  # noqa: BLE001 - one unreadable video must not sink the report
            item.strip_note = f"frames unavailable: {type(exc).__name__}: {str(exc)[:160]}"
            continue
        images = [Image.fromarray(f) for f in frames]
        scaled = [im.resize((max(1, round(im.width * THUMB_HEIGHT / im.height)), THUMB_HEIGHT)) for im in images]
        gap = 3
        strip = Image.new("RGB", (sum(im.width for im in scaled) + gap * (len(scaled) - 1), THUMB_HEIGHT), "white")
        x = 0
        for im in scaled:
            strip.paste(im, (x, 0))
            x += im.width + gap
        name = f"frames/{item.record.id}.png"
        strip.save(out / name)
        item.strip = name
    return None


# --- page --------------------------------------------------------------------------------------------------


def _render(report: Report) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]))
    env.filters["score"] = lambda v: "–" if v is None else f"{v:.3f}"
    env.filters["short_model"] = lambda m: m.rstrip("/").split("/")[-1]
    return env.get_template("report.html.j2").render(
        r=report, aspects=ASPECTS, labels=LABELS, stand_in_warning=STAND_IN_WARNING, escape=html.escape,
        score_class=_score_class)


def _score_class(value: float | None, stats: GroupStats | None, aspect: str) -> str:
    """low / mid / high relative to the batch's own p10 and p90 (stand-in scores have no absolute scale)."""
    if value is None or stats is None or stats.aspects[aspect].p10 is None:
        return "mid"
    s = stats.aspects[aspect]
    if value <= (s.p10 or 0):
        return "low"
    if value >= (s.p90 or 0):
        return "high"
    return "mid"


def find_chromium() -> str | None:
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(page: Path, png: Path, *, width: int = 1400, height: int = 2400, timeout_s: float = 90) -> Path:
    """Render `page` with headless Chromium into `png` (what a person would see), for tests and docs."""
    import subprocess
    import tempfile

    chromium = find_chromium()
    if chromium is None:
        raise RuntimeError("no chromium: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="videoscore-chromium-") as profile:
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", f"--user-data-dir={profile}", f"--screenshot={png}",
             f"--window-size={width},{height}", page.resolve().as_uri()],
            check=True, capture_output=True, timeout=timeout_s,
        )
    return png
