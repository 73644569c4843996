"""The VideoScore-Qwen2-VL stand-in is the published checkpoint in miniature, and the Scorer drives it by the
published recipe: it loads with mantis' keys, tokenizes with Qwen2-VL's special tokens and chat template,
samples at 8 fps, and a video's scores do not depend on the batch it travels in."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from videoscore.core.errors import InvalidJobError, PromptTooLongError, VideoDecodeError
from videoscore.core.variants import STAND_IN_MARKER, resolve_model
from videoscore.worker.model.qwen2_vl import recipe as recipe
from videoscore.worker.model.qwen2_vl.modeling import VideoScoreQwen2VLForSequenceClassification
from videoscore.worker.model.recipes import Qwen2VLRecipe, recipe_for
from videoscore.worker.model.scorer import Scorer, ScoreRequest
from videoscore.worker.testing.stand_in import build_stand_in_checkpoint
from videoscore.worker.testing.stand_in_qwen2_vl import QWEN2_VL_CHAT_TEMPLATE, SPECIAL_TOKENS

QWEN = "TIGER-Lab/VideoScore-Qwen2-VL"
FP32_TOLERANCE = 1e-5


def frames_of(n: int, height: int = 48, width: int = 64, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(n)]


def scores_of(result) -> np.ndarray:
    return np.array([s.as_list() for s in result.scores])


@pytest.fixture(scope="module")
def scorer(qwen2_vl_stand_in: Path) -> Scorer:
    with Scorer.load(resolve_model(str(qwen2_vl_stand_in)), device="cpu") as loaded:
        yield loaded


# --- the folder and the model ---------------------------------------------------------------------------------


def test_the_folder_is_a_small_stand_in_marked_with_its_variant(qwen2_vl_stand_in: Path):
    marker = json.loads((qwen2_vl_stand_in / STAND_IN_MARKER).read_text())
    assert marker == {"variant": QWEN, "stand_in": True, "seed": 0}
    spec = resolve_model(str(qwen2_vl_stand_in))
    assert spec.stand_in and spec.variant.family == "qwen2_vl" and "UNTRAINED STAND-IN" in spec.label
    files = {f.name for f in qwen2_vl_stand_in.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "preprocessor_config.json", "chat_template.json"} <= files
    assert sum(f.stat().st_size for f in qwen2_vl_stand_in.iterdir()) < 5_000_000


def test_it_loads_with_mantis_keys_and_no_missing_or_unexpected_ones(qwen2_vl_stand_in: Path):
    model, info = VideoScoreQwen2VLForSequenceClassification.from_pretrained(
        qwen2_vl_stand_in, output_loading_info=True
    )

    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    keys = set(model.state_dict())
    assert all(k.startswith(("visual.", "model.", "score.")) for k in keys)
    assert {"score.weight", "score.bias", "model.embed_tokens.weight", "model.norm.weight",
            "visual.patch_embed.proj.weight", "visual.merger.mlp.2.weight"} <= keys
    assert not any(k.startswith(("model.language_model.", "model.visual.", "lm_head.")) for k in keys)
    assert model.score.out_features == 5 and model.config.problem_type == "regression"
    assert model.config.tie_word_embeddings is False


def test_the_config_names_the_tokenizers_vision_tokens(qwen2_vl_stand_in: Path, scorer: Scorer):
    config = scorer._require_model().config
    tokenizer = scorer._processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids
    assert config.video_token_id == ids("<|video_pad|>") and config.image_token_id == ids("<|image_pad|>")
    assert config.vision_start_token_id == ids("<|vision_start|>")
    assert config.pad_token_id == tokenizer.pad_token_id == ids("<|endoftext|>")
    assert config.text_config.vocab_size == len(tokenizer)


def test_the_same_seed_builds_the_same_checkpoint_fast_and_another_seed_other_weights(qwen2_vl_stand_in, tmp_path):
    started = time.perf_counter()
    same = build_stand_in_checkpoint(tmp_path / "same", variant=QWEN, seed=0)
    assert time.perf_counter() - started < 20
    other = build_stand_in_checkpoint(tmp_path / "other", variant=QWEN, seed=1)

    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (same / name).read_bytes() == (qwen2_vl_stand_in / name).read_bytes()
    assert (other / "model.safetensors").read_bytes() != (same / "model.safetensors").read_bytes()


# --- tokenizer, template, processor settings -------------------------------------------------------------------


def test_the_tokenizer_has_qwen2_vl_special_tokens_in_order_and_adds_no_bos(scorer: Scorer):
    tokenizer = scorer._processor.tokenizer
    ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert ids == list(range(ids[0], ids[0] + len(SPECIAL_TOKENS)))  # consecutive, after the learned vocabulary
    for token in SPECIAL_TOKENS:
        assert tokenizer(token, add_special_tokens=False).input_ids == [tokenizer.convert_tokens_to_ids(token)]
    assert tokenizer("a cat").input_ids == tokenizer("a cat", add_special_tokens=False).input_ids
    text = "Ünïcödé prompt: 日本語の動画, emoji 🎬, tabs\tand\nnewlines"
    assert tokenizer.decode(tokenizer(text).input_ids) == text


def test_the_chat_text_is_qwen2_vl_instructs_template_around_one_video_then_the_prompt(scorer: Scorer):
    assert scorer._processor.chat_template == QWEN2_VL_CHAT_TEMPLATE
    text = scorer._processor.chat_text("a cat")
    assert text.startswith(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|video_pad|><|vision_end|>\nSuppose you are an expert"
    )
    assert text.endswith('the text prompt is "a cat",\nall the frames of video are as follows:\n'
                         "<|im_end|>\n<|im_start|>assistant\n")


def test_the_processor_settings_are_the_qwen2_vl_image_processors_with_small_pixel_bounds(scorer: Scorer):
    vision = scorer._processor.vision
    assert (vision.patch_size, vision.temporal_patch_size, vision.merge_size) == (14, 2, 2)
    assert (vision.min_pixels, vision.max_pixels) == (56 * 56, 16 * 28 * 28)
    assert vision.image_mean == (0.48145466, 0.4578275, 0.40821073)


# --- sampling: qwen-vl-utils 0.0.8 at 8 fps ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "fps", "expected"),
    [
        (48, 24.0, 16),  # 2 s at 8 fps
        (39, 24.0, 12),  # 13 frames -> round(6.5) = 6 pairs: half to even, as Python's round
        (45, 24.0, 16),  # 15 frames -> round(7.5) = 8 pairs
        (5, 8.0, 4),  # at least 4, at most the even count <= total
        (3, 30.0, 2),
        (10_000, 30.0, 768),  # at most 768
        (240, 8.0, 240),  # native 8 fps: every frame
    ],
)
def test_the_frame_count_follows_qwen_vl_utils(total, fps, expected):
    assert recipe.num_sampled_frames(total, fps) == expected


def test_frame_numbers_are_linspace_rounded_half_to_even_and_span_the_video():
    assert recipe.sample_indices(48, 24.0) == [0, 3, 6, 9, 13, 16, 19, 22, 25, 28, 31, 34, 38, 41, 44, 47]
    assert recipe.sample_indices(100, 30.0, nframes=7) == [round(x) for x in np.linspace(0, 99, 8)]


def test_a_video_too_short_or_without_a_rate_cannot_be_sampled():
    with pytest.raises(VideoDecodeError, match="at least 2"):
        recipe.num_sampled_frames(1, 24.0)
    with pytest.raises(VideoDecodeError, match="frame rate"):
        recipe.num_sampled_frames(48, 0.0)


def test_qwen_vl_utils_resizes_every_video_to_at_least_128_merged_patches_per_frame():
    assert recipe.video_frame_size(16, 48, 64) == (280, 392)  # small frames are scaled up
    assert recipe.video_frame_size(16, 720, 1280) == (560, 1008)  # large ones down to 768*28*28 at most
    assert recipe.video_frame_size(600, 720, 1280) == (224, 420)  # long videos share a total pixel budget


def test_the_worker_samples_qwen2_vl_videos_at_8_fps(tmp_path):
    from tests.media import make_video

    video = make_video(tmp_path / "clip.mp4", frames=30, fps=15, size=(96, 64))
    sampled = recipe_for("qwen2_vl").sample(video, num_frames=None, max_pixels=None)
    assert sampled.indices == recipe.sample_indices(30, 15.0) and len(sampled.indices) == 16
    assert isinstance(recipe_for("qwen2_vl"), Qwen2VLRecipe)
    assert recipe_for("qwen2_vl").sample(video, num_frames=6, max_pixels=None).indices == [0, 6, 12, 17, 23, 29]


# --- scoring ---------------------------------------------------------------------------------------------------


def test_a_video_gets_five_finite_unrounded_scores(scorer: Scorer):
    scorer.warm_up()
    result = scorer.score([ScoreRequest(frames_of(16), "A red car drives along the coast at sunset.")])
    values = result.scores[0].as_list()
    assert len(values) == 5 and all(math.isfinite(x) for x in values)
    assert any(round(x, 3) != x for x in values)
    assert scorer.device == torch.device("cpu") and scorer.dtype == torch.float32
    assert scorer._require_model().config._attn_implementation == "sdpa"


def test_batching_with_right_padding_does_not_change_scores(scorer: Scorer):
    requests = [
        ScoreRequest(frames_of(16, seed=1), "A cat plays the piano."),
        ScoreRequest(frames_of(6, 96, 64, seed=2), "Two dogs run along a beach at sunset, cinematic, slow motion."),
        ScoreRequest(frames_of(5, 40, 120, seed=3), "rain"),  # odd count: the last frame is repeated
    ]
    alone = np.array([scores_of(scorer.score([r]))[0] for r in requests])
    batched = scorer.score(requests)
    reversed_batch = scores_of(scorer.score(requests[::-1]))[::-1]

    np.testing.assert_allclose(scores_of(batched), alone, rtol=0, atol=FP32_TOLERANCE)
    np.testing.assert_allclose(reversed_batch, alone, rtol=0, atol=FP32_TOLERANCE)
    assert np.abs(alone[0] - alone[1]).max() > 1e-4  # different videos, different scores: the test has teeth


def test_sdpa_and_eager_attention_agree(scorer: Scorer, qwen2_vl_stand_in: Path):
    requests = [ScoreRequest(frames_of(4, seed=5), "a robot"), ScoreRequest(frames_of(8, seed=6), "b")]
    with Scorer.load(resolve_model(str(qwen2_vl_stand_in)), device="cpu", attn_implementation="eager") as eager:
        np.testing.assert_allclose(
            scores_of(eager.score(requests)), scores_of(scorer.score(requests)), rtol=0, atol=FP32_TOLERANCE
        )


@pytest.mark.parametrize("token", ["<|video_pad|>", "<|vision_start|>", "<|im_end|>", "<|endoftext|>"])
def test_a_prompt_spelling_a_reserved_token_is_refused(scorer: Scorer, token: str):
    with pytest.raises(InvalidJobError, match="reserved token"):
        scorer.check_prompt(f"a cat {token} on a mat")
    with pytest.raises(InvalidJobError, match="reserved token"):
        scorer.score([ScoreRequest(frames_of(2), f"a cat {token}")])


def test_a_prompt_too_long_for_the_model_is_refused_before_decoding(scorer: Scorer):
    assert scorer.max_tokens == 32_768
    with pytest.raises(PromptTooLongError, match="tokens"):
        scorer.check_prompt("a cat sits on the mat " * 8_000)
