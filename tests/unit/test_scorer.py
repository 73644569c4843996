"""The scoring engine turns frames + prompts into five unrounded scores, and a video's scores do not depend on
the batch it travels in, on the attention kernel, or on the run."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.model_fixtures import stand_in_checkpoint  # noqa: F401
from videoscore.core.errors import DeviceError, InvalidJobError, ModelLoadError, PromptTooLongError
from videoscore.core.variants import ASPECTS, resolve_model
from videoscore.worker.model.idefics2.modeling import pooling_index
from videoscore.worker.model.scorer import (
    AspectScores,
    BatchResult,
    Scorer,
    ScoreRequest,
    ScorerProtocol,
    _device_errors,
    resolve_device,
)

FP32_TOLERANCE = 1e-5


def gradient_frames(n: int, height: int = 48, width: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Synthetic RGB frames: a moving colour gradient plus a little noise, different for every seed."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    frames = []
    for t in range(n):
        base = np.stack([xs * 255 / width, ys * 255 / height, np.full_like(xs, (40 * t + 60 * seed) % 256)], -1)
        frames.append(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))
    return frames


def scores_of(result: BatchResult) -> np.ndarray:
    return np.array([s.as_list() for s in result.scores])


@pytest.fixture(scope="module")
def scorer(stand_in_checkpoint: Path) -> Scorer:
    with Scorer.load(resolve_model(str(stand_in_checkpoint)), device="cpu", dtype="auto") as loaded:
        yield loaded


# --- loading ------------------------------------------------------------------------------------------------


def test_load_picks_the_cpu_in_fp32_with_sdpa_and_knows_the_checkpoints_revision(scorer, stand_in_checkpoint):
    assert scorer.device == torch.device("cpu") and scorer.dtype == torch.float32
    assert scorer._model.config._attn_implementation == "sdpa"
    assert len(scorer.revision) == 16 and int(scorer.revision, 16) >= 0
    assert scorer.spec.stand_in
    assert isinstance(scorer, ScorerProtocol)  # what the engine and the worker's metering take


def test_the_revision_is_stable_and_tells_checkpoints_apart(scorer, stand_in_checkpoint, tmp_path):
    from videoscore.worker.model.scorer import checkpoint_revision
    from videoscore.worker.testing.stand_in import build_stand_in_checkpoint

    assert checkpoint_revision(str(stand_in_checkpoint)) == scorer.revision
    other = build_stand_in_checkpoint(tmp_path / "seed-1", seed=1)
    assert checkpoint_revision(str(other)) != scorer.revision


def test_a_broken_checkpoint_raises_model_load_error(stand_in_checkpoint, tmp_path):
    broken = Path(shutil.copytree(stand_in_checkpoint, tmp_path / "broken"))
    (broken / "model.safetensors").unlink()

    with pytest.raises(ModelLoadError, match="could not load"):
        Scorer.load(resolve_model(str(broken)), device="cpu")


def test_a_closed_scorer_refuses_to_score(stand_in_checkpoint):
    scorer = Scorer.load(resolve_model(str(stand_in_checkpoint)), device="cpu")
    scorer.close()

    with pytest.raises(RuntimeError, match="closed"):
        scorer.score([ScoreRequest(gradient_frames(1), "a cat")])


# --- scoring ------------------------------------------------------------------------------------------------


def test_a_video_gets_five_finite_unrounded_scores_in_aspect_order(scorer):
    scorer.warm_up()
    result = scorer.score([ScoreRequest(gradient_frames(4), "A red car drives along the coast at sunset.")])

    assert len(result.scores) == 1
    scores = result.scores[0]
    assert [f.name for f in fields(AspectScores)] == list(ASPECTS)
    assert len(scores.as_list()) == 5 and all(math.isfinite(x) for x in scores.as_list())
    assert any(round(x, 3) != x for x in scores.as_list())  # full precision; rounding is for display
    assert result.preprocess_s > 0 and result.forward_s > 0


def test_the_variants_full_48_frames_score(scorer):
    assert scorer.spec.num_frames == 48
    scorer.check_prompt("A herd of elephants crosses a river.")

    result = scorer.score([ScoreRequest(gradient_frames(48, seed=7), "A herd of elephants crosses a river.")])

    assert all(math.isfinite(x) for x in result.scores[0].as_list())


def test_different_videos_and_prompts_get_different_scores(scorer):
    a = scorer.score([ScoreRequest(gradient_frames(2, seed=1), "a cat")]).scores[0].as_list()
    b = scorer.score([ScoreRequest(gradient_frames(2, seed=2), "a cat")]).scores[0].as_list()
    c = scorer.score([ScoreRequest(gradient_frames(2, seed=1), "a dog on a beach")]).scores[0].as_list()

    assert np.abs(np.subtract(a, b)).max() > 1e-4  # the frames matter, so batching tests are not vacuous
    assert np.abs(np.subtract(a, c)).max() > 1e-4


def test_batching_does_not_change_scores(scorer):
    requests = [
        ScoreRequest(gradient_frames(4, seed=1), "A cat plays the piano."),
        ScoreRequest(gradient_frames(7, seed=2), "Two dogs run along a beach at sunset, cinematic, slow motion."),
        # Taller than the others after resizing (400×378 vs 378×378): the batch pads its pixels, masked.
        ScoreRequest(gradient_frames(2, 400, 300, seed=3), "rain"),
    ]
    alone = np.array([scores_of(scorer.score([r]))[0] for r in requests])

    batched = scores_of(scorer.score(requests))
    reversed_batch = scores_of(scorer.score(requests[::-1]))[::-1]

    np.testing.assert_allclose(batched, alone, rtol=0, atol=FP32_TOLERANCE)
    np.testing.assert_allclose(reversed_batch, alone, rtol=0, atol=FP32_TOLERANCE)


def test_the_same_input_gives_identical_scores(scorer):
    request = ScoreRequest(gradient_frames(3, seed=4), "A lighthouse in a storm.")

    assert scorer.score([request]).scores == scorer.score([request]).scores


def test_sdpa_and_eager_attention_agree(scorer, stand_in_checkpoint):
    requests = [ScoreRequest(gradient_frames(3, seed=5), "a robot"), ScoreRequest(gradient_frames(5, seed=6), "b")]
    eager = Scorer.load(resolve_model(str(stand_in_checkpoint)), device="cpu", attn_implementation="eager")
    assert eager._model.config._attn_implementation == "eager"

    np.testing.assert_allclose(
        scores_of(eager.score(requests)), scores_of(scorer.score(requests)), rtol=0, atol=FP32_TOLERANCE
    )
    eager.close()


def test_an_empty_batch_is_an_empty_result(scorer):
    assert scorer.score([]).scores == []


# --- what cannot be scored --------------------------------------------------------------------------------------


def prompt_of_about(scorer: Scorer, tokens: int) -> str:
    """English text that the checkpoint's tokenizer turns into roughly ``tokens`` tokens."""
    unit = "a cat sits on the mat "
    per_unit = len(scorer._processor.tokenizer(unit * 100, add_special_tokens=False).input_ids) / 100
    return unit * int(tokens / per_unit)


def test_a_prompt_too_long_for_the_model_raises_prompt_too_long(scorer):
    too_long = prompt_of_about(scorer, scorer.max_tokens + 1_000)
    assert scorer.max_tokens == 32_768  # the text model's positions; the tokenizer sets no lower limit

    with pytest.raises(PromptTooLongError, match="tokens"):
        scorer.check_prompt(too_long)
    with pytest.raises(PromptTooLongError):
        scorer.score([ScoreRequest(gradient_frames(1), too_long)])


def test_the_frame_count_counts_towards_the_limit(scorer):
    # 47 more frames add 47 × (64 image tokens + 2 boundary tokens + a space) ≈ 3,150 tokens.
    prompt = prompt_of_about(scorer, scorer.max_tokens - 1_500)
    scorer.check_prompt(prompt, num_frames=1)

    with pytest.raises(PromptTooLongError, match="48 frames"):
        scorer.check_prompt(prompt)


def test_a_prompt_spelling_the_pad_token_is_refused_because_it_would_move_the_scored_position(scorer):
    with pytest.raises(InvalidJobError, match="reserved token"):
        scorer.check_prompt("a cat <unk> on a mat")
    with pytest.raises(InvalidJobError, match="reserved token"):
        scorer.score([ScoreRequest(gradient_frames(1), "a cat <unk> on a mat")])


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [np.zeros((8, 8, 3), dtype=np.float32)],
        [np.zeros((8, 8), dtype=np.uint8)],
        [np.zeros((8, 8, 4), dtype=np.uint8)],
    ],
    ids=["no frames", "float frames", "grey frames", "rgba frames"],
)
def test_frames_that_are_not_rgb_uint8_are_refused(scorer, frames):
    with pytest.raises(InvalidJobError):
        scorer.score([ScoreRequest(frames, "a cat")])


# --- the model's pooling rule (mantis') ---------------------------------------------------------------------


def test_pooling_takes_the_token_before_the_first_pad_and_the_last_token_of_an_unpadded_row():
    input_ids = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9]])

    assert pooling_index(input_ids, pad_token_id=0).tolist() == [2, 4]


def test_without_a_pad_id_pooling_takes_the_last_token_and_refuses_batches():
    assert pooling_index(torch.tensor([[5, 6, 7]]), pad_token_id=None) == -1
    with pytest.raises(ValueError, match="padding token"):
        pooling_index(torch.tensor([[5, 6], [7, 8]]), pad_token_id=None)


def test_a_checkpoint_without_a_pad_id_scores_the_same_and_still_batches(scorer, stand_in_checkpoint, tmp_path):
    # Mantis-era configs may carry no top-level pad_token_id: mantis then pools the last token (batch of 1).
    folder = Path(shutil.copytree(stand_in_checkpoint, tmp_path / "no-pad-id"))
    config = json.loads((folder / "config.json").read_text())
    del config["pad_token_id"]
    (folder / "config.json").write_text(json.dumps(config))
    requests = [ScoreRequest(gradient_frames(3, seed=8), "a cat"), ScoreRequest(gradient_frames(6, seed=9), "b b")]

    with Scorer.load(resolve_model(str(folder)), device="cpu") as no_pad:
        np.testing.assert_allclose(
            scores_of(no_pad.score(requests)), scores_of(scorer.score(requests)), rtol=0, atol=FP32_TOLERANCE
        )


# --- device failures ----------------------------------------------------------------------------------------


def test_cuda_failures_become_device_errors_and_other_errors_pass_through():
    with pytest.raises(DeviceError):
        with _device_errors():
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
    with pytest.raises(DeviceError):
        with _device_errors():
            raise torch.cuda.OutOfMemoryError("out of memory")
    with pytest.raises(RuntimeError, match="shape"):
        with _device_errors():
            raise RuntimeError("shape mismatch")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_cuda_is_a_device_error():
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError):
        resolve_device("cuda")
