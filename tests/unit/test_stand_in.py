"""An untrained stand-in is a real VideoScore checkpoint in miniature: it loads, tokenizes and processes
exactly like the published weights, is marked as a stand-in, and is reproducible from its seed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoProcessor

from tests.model_fixtures import stand_in_checkpoint  # noqa: F401
from videoscore.core.variants import STAND_IN_MARKER, resolve_model
from videoscore.worker.model.idefics2.modeling import VideoScoreForSequenceClassification
from videoscore.worker.model.scorer import Scorer, ScoreRequest
from videoscore.worker.testing.stand_in import build_stand_in_checkpoint, main

V1_1 = "TIGER-Lab/VideoScore-v1.1"


def _load(folder: Path) -> tuple[VideoScoreForSequenceClassification, dict]:
    return VideoScoreForSequenceClassification.from_pretrained(folder, output_loading_info=True)


# --- the folder ---------------------------------------------------------------------------------------------


def test_the_folder_is_marked_as_an_untrained_stand_in_of_its_variant(stand_in_checkpoint):
    marker = json.loads((stand_in_checkpoint / STAND_IN_MARKER).read_text())

    assert marker == {"variant": V1_1, "stand_in": True, "seed": 0}
    assert "UNTRAINED STAND-IN" in (stand_in_checkpoint / "README.md").read_text()
    spec = resolve_model(str(stand_in_checkpoint))
    assert spec.stand_in and spec.variant.hub_id == V1_1 and spec.num_frames == 48
    assert "UNTRAINED STAND-IN" in spec.label


def test_the_folder_is_a_few_megabytes_of_safetensors(stand_in_checkpoint):
    files = {f.name for f in stand_in_checkpoint.iterdir()}
    size = sum(f.stat().st_size for f in stand_in_checkpoint.iterdir())

    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= files
    assert not any(name.endswith(".bin") for name in files)
    assert size < 5_000_000


# --- the model ----------------------------------------------------------------------------------------------


def test_it_loads_through_from_pretrained_with_no_missing_or_unexpected_keys(stand_in_checkpoint):
    model, info = _load(stand_in_checkpoint)

    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    keys = model.state_dict().keys()
    assert all(k.startswith(("model.", "score.")) for k in keys)
    assert {"score.weight", "score.bias"} <= set(keys)  # mantis' nn.Linear keeps its bias
    assert model.score.out_features == 5 and model.config.problem_type == "regression"


def test_the_saved_config_keeps_the_published_eps_mismatch_and_loading_applies_mantis_text_eps(
    stand_in_checkpoint,
):
    saved = json.loads((stand_in_checkpoint / "config.json").read_text())
    # As in the real Mantis configs: perceiver 1e-6, text 1e-5, and an explicit perceiver hidden size (without
    # it, Idefics2Config would copy the text eps into the perceiver and hide the difference).
    assert saved["perceiver_config"]["rms_norm_eps"] == 1e-6
    assert saved["text_config"]["rms_norm_eps"] == 1e-5
    assert saved["perceiver_config"]["hidden_size"] == saved["text_config"]["hidden_size"]

    model, _ = _load(stand_in_checkpoint)

    assert model.config.perceiver_config.rms_norm_eps == model.config.text_config.rms_norm_eps == 1e-5
    perceiver_norms = [
        m for m in model.model.connector.perceiver_resampler.modules() if type(m).__name__ == "Idefics2RMSNorm"
    ]
    assert perceiver_norms and all(m.variance_epsilon == 1e-5 for m in perceiver_norms)


def test_the_perceiver_eps_visibly_changes_scores_so_a_parity_test_can_catch_the_eps_bug(stand_in_checkpoint):
    rng = np.random.default_rng(0)
    request = ScoreRequest(frames=[rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(2)], prompt="x")
    scorer = Scorer.load(resolve_model(str(stand_in_checkpoint)), device="cpu")
    with_mantis_eps = scorer.score([request]).scores[0].as_list()
    for module in scorer._model.model.connector.perceiver_resampler.modules():
        if type(module).__name__ == "Idefics2RMSNorm":
            module.variance_epsilon = 1e-6  # what transformers would use without the fix-up
    with_config_eps = scorer.score([request]).scores[0].as_list()

    assert np.abs(np.subtract(with_mantis_eps, with_config_eps)).max() > 1e-4


def test_the_image_token_and_pad_ids_match_the_tokenizer_and_the_perceiver_has_64_latents(stand_in_checkpoint):
    model, _ = _load(stand_in_checkpoint)
    processor = AutoProcessor.from_pretrained(stand_in_checkpoint, backend="pil")
    tokenizer = processor.tokenizer

    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<image>")
    assert model.config.pad_token_id == model.config.text_config.pad_token_id == tokenizer.pad_token_id
    assert model.config.text_config.vocab_size == len(tokenizer)
    assert model.config.perceiver_config.resampler_n_latents == processor.image_seq_len == 64


# --- tokenizer and processor --------------------------------------------------------------------------------


def test_the_processor_has_the_videoscore_settings(stand_in_checkpoint):
    processor = AutoProcessor.from_pretrained(stand_in_checkpoint, backend="pil")
    image_processor = processor.image_processor

    assert type(processor).__name__ == "Idefics2Processor"
    assert image_processor.do_image_splitting is False
    assert dict(image_processor.size) == {"longest_edge": 980, "shortest_edge": 378}


def test_the_tokenizer_prepends_bos_like_mistral_and_has_the_idefics2_special_tokens(stand_in_checkpoint):
    tokenizer = AutoProcessor.from_pretrained(stand_in_checkpoint, backend="pil").tokenizer

    ids = tokenizer("a cat").input_ids
    assert ids[0] == tokenizer.bos_token_id and tokenizer.eos_token_id not in ids
    assert [tokenizer.convert_ids_to_tokens(i) for i in (0, 1, 2)] == ["<unk>", "<s>", "</s>"]
    for token in ("<image>", "<fake_token_around_image>", "<end_of_utterance>"):
        assert tokenizer(token, add_special_tokens=False).input_ids == [tokenizer.convert_tokens_to_ids(token)]
    assert 1000 <= len(tokenizer) <= 2000


def test_the_tokenizer_is_byte_level_so_any_utf8_prompt_tokenizes_without_unknowns(stand_in_checkpoint):
    tokenizer = AutoProcessor.from_pretrained(stand_in_checkpoint, backend="pil").tokenizer
    text = "Ünïcödé prompt: 日本語の動画, emoji 🎬🐘, tabs\tand\nnewlines"

    ids = tokenizer(text, add_special_tokens=False).input_ids

    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_the_tokenizer_learned_english_so_prompts_take_few_tokens(stand_in_checkpoint):
    tokenizer = AutoProcessor.from_pretrained(stand_in_checkpoint, backend="pil").tokenizer
    text = "A golden retriever runs through a snowy forest at night, cinematic lighting."

    assert len(tokenizer(text, add_special_tokens=False).input_ids) < len(text) / 3


# --- reproducibility, speed, CLI ----------------------------------------------------------------------------


def test_the_same_seed_builds_the_same_checkpoint_and_another_seed_other_weights(tmp_path, stand_in_checkpoint):
    same = build_stand_in_checkpoint(tmp_path / "same", seed=0)
    other = build_stand_in_checkpoint(tmp_path / "other", seed=1)

    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (same / name).read_bytes() == (stand_in_checkpoint / name).read_bytes()
    a, _ = _load(stand_in_checkpoint)
    b, _ = _load(other)
    assert not torch.equal(a.score.weight, b.score.weight)
    assert not torch.equal(a.model.vision_model.embeddings.patch_embedding.weight,
                           b.model.vision_model.embeddings.patch_embedding.weight)


def test_a_build_takes_seconds(tmp_path):
    started = time.perf_counter()
    build_stand_in_checkpoint(tmp_path / "timed")

    assert time.perf_counter() - started < 20


def test_the_cli_writes_a_checkpoint_for_the_requested_variant_and_seed(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "cli"), "--variant", "TIGER-Lab/VideoScore", "--seed", "3"]) == 0

    marker = json.loads((tmp_path / "cli" / STAND_IN_MARKER).read_text())
    assert marker == {"variant": "TIGER-Lab/VideoScore", "stand_in": True, "seed": 3}
    assert resolve_model(str(tmp_path / "cli")).num_frames == 16
    assert "UNTRAINED STAND-IN" in capsys.readouterr().out


def test_there_is_no_stand_in_for_an_unknown_variant(tmp_path):
    # (The Qwen2-VL variant has its own builder: tests/unit/test_qwen2_vl_stand_in.py.)
    with pytest.raises(ValueError, match="no stand-in"):
        build_stand_in_checkpoint(tmp_path / "nope", variant="someone/else")
