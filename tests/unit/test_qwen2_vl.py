"""Parity with the published VideoScore-Qwen2-VL recipe: our engine must score exactly what mantis scores.

The golden file (``reference/golden/qwen2_vl_fp32.json``) holds what TIGER-AI-Lab/VideoScore's
``examples/run_videoscore_qwen2_vl.py`` outputs -- mantis-vl 0.0.5's ``Qwen2VLForSequenceClassification`` on
transformers 4.46.3 with qwen-vl-utils 0.0.8, run by ``reference/qwen2_vl/recipe.py`` -- for an untrained
stand-in checkpoint (seed 0) and four synthetic videos, committed as ``reference/golden/videos/<case id>.mp4``
(encoding is not bit-reproducible across machines, so they are never re-encoded here).
``reference/qwen2_vl/generate.py`` made it; these tests rebuild the same checkpoint, check that it and the
committed videos are byte-for-byte the golden's inputs, and then hold each layer of our pipeline to the recipe's
output:

1. frame sampling (``videoscore.worker.model.qwen2_vl.recipe.sample_video``): qwen-vl-utils' 8-fps frame numbers, and
frames
   pixel-identical to its decoder's;
2. resizing (``resize_video``): qwen-vl-utils' torchvision bicubic resize, bit for bit;
3. the chat text (``Qwen2VLInputs.chat_text``): the processor's chat template output, character for character;
4. preprocessing (``Qwen2VLInputs.encode``): the same input ids and the same ``pixel_values_videos``, bit for bit;
5. the model (``Scorer`` on ``videoscore.worker.model.qwen2_vl.modeling``): the same logits, fp32 within 1e-4;
6. and a guard that shows the comparison has teeth: with transformers 5's 3-D M-RoPE positions instead of
   mantis' 1-D ones, the logits miss the golden by far more than the tolerance.

A failure in an earlier layer explains any failure in a later one, so read the first one first.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from reference import generate as idefics2_generate
from reference.qwen2_vl.generate import (
    CASES,
    GOLDEN_DIR,
    GOLDEN_FILE,
    OUT_ENV,
    VIDEOS_DIR,
    checkpoint_fingerprint,
    committed_videos,
    compare_goldens,
    sha256_array,
    sha256_file,
)
from tests.media import layout_of
from videoscore.core.variants import resolve_model
from videoscore.worker.model.prompt import REGRESSION_QUERY_PROMPT
from videoscore.worker.model.qwen2_vl import recipe as qwen2_vl_recipe
from videoscore.worker.model.scorer import Scorer, ScoreRequest

GOLDEN = json.loads((GOLDEN_DIR / GOLDEN_FILE).read_text())
CASE_IDS = [case["id"] for case in GOLDEN["cases"]]
REGENERATE = "if the change is intended, regenerate the golden with `make reference` and commit it"
REENCODE = (
    "restore the committed videos (`git checkout -- reference/golden/videos`); to change a case on purpose, run "
    "`.venv/bin/python reference/qwen2_vl/generate.py --encode-videos` (it re-encodes them and regenerates the "
    "golden) and commit the videos and reference/golden/qwen2_vl_fp32.json together"
)

# fp32: both stacks agree to 4.8e-7 here (measured: float32 rounding in a different operation order, SDPA in
# both). 1e-4 is 200x that, and far below what the position guard below plants.
FP32_ABS_TOL = 1e-4


def _case(case_id: str) -> dict:
    return next(c for c in GOLDEN["cases"] if c["id"] == case_id)


def _max_abs_diff(ours, golden) -> float:
    return float(np.max(np.abs(np.asarray(ours, dtype=np.float64) - np.asarray(golden, dtype=np.float64))))


# --- the inputs: the checkpoint rebuilt (qwen2_vl_stand_in), the videos as committed ----------------------


@pytest.fixture(scope="module")
def videos() -> dict[str, Path]:
    return committed_videos()


@pytest.fixture(scope="module")
def sampled(videos: dict[str, Path]) -> dict:
    """Each case's video sampled by our Qwen2-VL sampler, as the worker does it."""
    return {case_id: qwen2_vl_recipe.sample_video(videos[case_id]) for case_id in CASE_IDS}


@pytest.fixture(scope="module")
def scorer(qwen2_vl_stand_in: Path) -> Scorer:
    with Scorer.load(resolve_model(str(qwen2_vl_stand_in)), device="cpu", dtype="float32") as loaded:
        yield loaded


@pytest.fixture(scope="module")
def logits(scorer: Scorer, sampled: dict) -> dict[str, list[float]]:
    # One video per forward, as the example does it.
    return {
        case_id: scorer.score([ScoreRequest(frames=sampled[case_id].frames, prompt=_case(case_id)["prompt"])])
        .scores[0]
        .as_list()
        for case_id in CASE_IDS
    }


# --- 0. the golden and its inputs are what we think they are -------------------------------------------------


def test_golden_was_made_by_the_published_recipe_stack():
    assert GOLDEN["versions"]["transformers"] == "4.46.3"
    assert GOLDEN["versions"]["mantis-vl"] == "0.0.5"
    assert GOLDEN["versions"]["qwen-vl-utils"] == "0.0.8"
    assert GOLDEN["model"]["class"] == "mantis.models.qwen2_vl.modeling_qwen2_vl.Qwen2VLForSequenceClassification"
    assert not any(GOLDEN["model"]["loading_info"].values()), "the golden's model did not load cleanly"
    assert GOLDEN["model"]["score_bias"] is True
    assert GOLDEN["processor"]["video_reader"] == "torchvision"
    assert GOLDEN["fps"] == qwen2_vl_recipe.FPS == 8.0
    assert GOLDEN["dtype"] == "float32"
    assert CASE_IDS == [c.id for c in CASES]


def test_fresh_golden_matches_committed():
    """CI runs `make reference` with VIDEOSCORE_REFERENCE_OUT set: the recipe, rerun, must give the same golden."""
    out = os.environ.get(OUT_ENV)
    if not out:
        pytest.skip(f"set {OUT_ENV} to a folder `make reference` wrote into (CI does)")
    fresh_path = Path(out) / GOLDEN_FILE
    assert fresh_path.is_file(), f"{fresh_path} missing: did `make reference` run with {OUT_ENV}={out}?"
    problems = compare_goldens(json.loads(fresh_path.read_text()), GOLDEN)
    assert not problems, f"regenerated {GOLDEN_FILE} differs from the committed one:\n  " + "\n  ".join(problems)


def test_the_golden_comparison_accepts_the_same_and_reports_drift():
    assert compare_goldens(copy.deepcopy(GOLDEN), GOLDEN) == []
    drifted = copy.deepcopy(GOLDEN)
    drifted["cases"][0]["logits"][2] += 1e-3
    drifted["cases"][1]["indices"] = drifted["cases"][1]["indices"][:-1]
    problems = compare_goldens(drifted, GOLDEN)
    assert len(problems) == 2 and "logits[2]" in problems[0] and "indices" in problems[1]


def test_rebuilt_checkpoint_is_the_goldens(qwen2_vl_stand_in: Path):
    fingerprint = checkpoint_fingerprint(qwen2_vl_stand_in)
    for key, value in fingerprint.items():
        assert value == GOLDEN["checkpoint"][key], (
            f"the stand-in rebuilt from seed {GOLDEN['generator']['seed']} differs from the golden's ({key}): "
            f"worker/stand_in_qwen2_vl.py (or torch's RNG) changed, so the golden logits no longer apply; {REGENERATE}"
        )


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_committed_video_is_the_goldens(videos: dict, case_id: str):
    video = videos[case_id]
    assert video.is_file(), f"{case_id}: {video} is missing; {REENCODE}"
    assert sha256_file(video) == _case(case_id)["video_sha256"], (
        f"{case_id}: {video} is not the video the golden was made from; {REENCODE}"
    )


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_committed_video_is_what_its_case_describes(videos: dict, case):
    """The committed file is the clip ``CASES`` says (so a case edited without --encode-videos is caught): its
    frame count, size and rate, and keyframes every ``gop`` frames."""
    layout = layout_of(videos[case.id])
    mismatch = f"{case.id}: {videos[case.id]} is not the clip its CASES entry describes; {REENCODE}"
    assert (layout["frames"], layout["size"], layout["fps"]) == (case.frames, case.size, case.fps), mismatch
    if case.gop is not None:
        assert layout["keyframes"] == list(range(0, case.frames, case.gop)), mismatch


def test_the_videos_folder_holds_both_goldens_videos_and_nothing_else():
    """Both generators keep their videos in reference/golden/videos by case id: --encode-videos for one golden
    must not overwrite the other's inputs, and a video no golden uses should not linger there."""
    ours, idefics2s = set(committed_videos().values()), set(idefics2_generate.committed_videos().values())
    assert not ours & idefics2s, "a Qwen2-VL case shares its video file name with an Idefics2 case"
    assert set(VIDEOS_DIR.iterdir()) == ours | idefics2s


def test_prompt_template_is_the_goldens():
    assert hashlib.sha256(REGRESSION_QUERY_PROMPT.encode()).hexdigest() == GOLDEN["prompt_template_sha256"]


# --- 1-2. sampling and resizing --------------------------------------------------------------------------------


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_sampled_indices_match_golden(sampled: dict, videos: dict, case_id: str):
    golden = _case(case_id)
    assert sampled[case_id].info.total_frames == golden["total_frames"]
    assert qwen2_vl_recipe.declared_fps(videos[case_id]) == golden["video_fps"]
    assert sampled[case_id].indices == golden["indices"]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_sampled_frames_are_pixel_identical_to_the_recipes(sampled: dict, case_id: str):
    frames = np.stack(sampled[case_id].frames)
    assert list(frames.shape) == _case(case_id)["frames"]["shape"]
    assert sha256_array(frames) == _case(case_id)["frames"]["sha256"], f"{case_id}: decoded pixels differ"


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_resized_frames_are_bit_identical_to_qwen_vl_utils(sampled: dict, case_id: str):
    resized = qwen2_vl_recipe.resize_video(sampled[case_id].frames).float().numpy()
    assert list(resized.shape) == _case(case_id)["resized_frames"]["shape"]
    assert sha256_array(resized) == _case(case_id)["resized_frames"]["sha256"], f"{case_id}: resize differs"


# --- 3-4. chat text and preprocessing --------------------------------------------------------------------------


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_chat_text_matches_the_processors_template(scorer: Scorer, case_id: str):
    golden = _case(case_id)
    assert scorer._processor.chat_text(golden["prompt"]) == golden["chat_text"]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_model_inputs_match_golden(scorer: Scorer, sampled: dict, case_id: str):
    golden = _case(case_id)
    inputs = scorer._processor.encode([golden["prompt"]], [sampled[case_id].frames])
    want = golden["inputs"]
    input_ids = inputs["input_ids"].numpy().astype(np.int64)
    assert input_ids.shape[-1] == want["input_ids"]["length"]
    assert sha256_array(input_ids) == want["input_ids"]["sha256"], f"{case_id}: tokenization differs"
    assert inputs["video_grid_thw"].tolist() == want["video_grid_thw"]
    pixels = inputs["pixel_values_videos"].float().numpy()
    assert list(pixels.shape) == want["pixel_values_videos"]["shape"]
    assert sha256_array(pixels) == want["pixel_values_videos"]["sha256"], (
        f"{case_id}: pixel values differ "
        f"(sum {pixels.astype(np.float64).sum()} vs {want['pixel_values_videos']['sum']})"
    )


# --- 5. the model -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_fp32_logits_match_golden(logits: dict, case_id: str):
    golden = _case(case_id)["logits"]
    delta = _max_abs_diff(logits[case_id], golden)
    assert delta <= FP32_ABS_TOL, (
        f"{case_id}: max |Δ| {delta:.3g} > {FP32_ABS_TOL}: ours {logits[case_id]}, golden {golden}"
    )


# --- 6. the guard: this comparison can fail -------------------------------------------------------------------


def mrope_position_ids(
    input_ids: torch.Tensor, grid_thw: torch.Tensor, video_token_id: int, merge: int
) -> torch.Tensor:
    """Qwen2-VL's 3-D M-RoPE positions (what ``get_rope_index`` computes) for rows with one video each."""
    batch, length = input_ids.shape
    positions = torch.zeros(3, batch, length, dtype=torch.long)
    for row in range(batch):
        where = (input_ids[row] == video_token_id).nonzero().flatten()
        start, count = int(where[0]), len(where)
        t, h, w = (int(x) for x in grid_thw[row])
        h, w = h // merge, w // merge
        assert t * h * w == count
        positions[:, row, :start] = torch.arange(start)
        mesh = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
        grid = torch.stack(mesh).reshape(3, -1)
        positions[:, row, start : start + count] = grid + start
        after = length - start - count
        positions[:, row, start + count :] = torch.arange(after) + int(positions[:, row, : start + count].max()) + 1
    return positions


def test_position_guard_with_mrope_positions_logits_miss_the_golden(scorer: Scorer, sampled: dict, logits: dict):
    """Give the model transformers 5's default 3-D M-RoPE positions instead of mantis' 1-D ones: the fp32
    comparison must then fail, by a wide margin, for every case. If this test fails, the parity test above
    cannot see the bug it exists for."""
    model = scorer._require_model()
    for case_id in CASE_IDS:
        golden = _case(case_id)
        inputs = scorer._processor.encode([golden["prompt"]], [sampled[case_id].frames])
        positions = mrope_position_ids(
            inputs["input_ids"],
            inputs["video_grid_thw"],
            model.config.video_token_id,
            model.config.vision_config.spatial_merge_size,
        )
        with torch.inference_mode():
            broken = model(**inputs, position_ids=positions).logits[0].tolist()
        delta = _max_abs_diff(broken, golden["logits"])
        assert delta > 10 * FP32_ABS_TOL, f"{case_id}: M-RoPE positions move logits by only {delta:.3g}"
        # The correct engine, on the same inputs, is inside the tolerance (so the guard measures the positions).
        assert _max_abs_diff(logits[case_id], golden["logits"]) <= FP32_ABS_TOL
