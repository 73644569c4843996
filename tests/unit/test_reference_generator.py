"""The golden is reproducible: regenerating it from scratch gives the committed files.

CI runs the generator into a temporary folder and then this file::

    export VIDEOSCORE_REFERENCE_OUT="$(mktemp -d)"
    make reference        # bash reference/setup_env.sh && .venv/bin/python reference/generate.py
    .venv/bin/python -m pytest tests/unit/test_reference_generator.py -q

``test_fresh_golden_matches_committed`` then compares the fresh files with ``reference/golden/``: the inputs'
fingerprints, sampled indices, frames, prompts and processor tensors exactly, the logits within what two runs
of the same recipe may differ by (``reference.generate.logits_tolerance``). A drift on either side (the
stand-in builder, the committed videos in reference/golden/videos, the recipe or its pinned environment) fails
here with the field that moved, instead of surfacing as a mysterious logit mismatch in test_parity.py. The
videos are read as committed, never re-encoded, so their ``video_sha256`` is the same on every machine.
Without the variable that test is skipped; the rest of this file (the comparison and translation logic) always
runs and needs no reference venv.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from reference.generate import (
    GOLDEN_DIR,
    GOLDEN_FILES,
    OUT_ENV,
    compare_goldens,
    weights_sha256,
    write_transformers4_view,
)

COMMITTED = {dtype: json.loads((GOLDEN_DIR / name).read_text()) for dtype, name in GOLDEN_FILES.items()}


@pytest.mark.parametrize("dtype", sorted(GOLDEN_FILES))
def test_fresh_golden_matches_committed(dtype: str):
    out = os.environ.get(OUT_ENV)
    if not out:
        pytest.skip(f"set {OUT_ENV} to a folder `make reference` wrote into (CI does)")
    fresh_path = Path(out) / GOLDEN_FILES[dtype]
    assert fresh_path.is_file(), f"{fresh_path} missing: did `make reference` run with {OUT_ENV}={out}?"
    problems = compare_goldens(json.loads(fresh_path.read_text()), COMMITTED[dtype])
    assert not problems, (
        f"regenerated {GOLDEN_FILES[dtype]} differs from the committed one:\n  " + "\n  ".join(problems)
        + "\nIf the change is intended, run `make reference` and commit reference/golden/."
    )


# --- the comparison itself ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", sorted(GOLDEN_FILES))
def test_comparison_accepts_an_identical_golden(dtype: str):
    assert compare_goldens(copy.deepcopy(COMMITTED[dtype]), COMMITTED[dtype]) == []


def test_comparison_reports_each_kind_of_drift():
    committed = COMMITTED["float32"]
    fresh = copy.deepcopy(committed)
    fresh["cases"][0]["logits"][2] += 1e-3
    fresh["cases"][1]["indices"] = fresh["cases"][1]["indices"][:-1]
    fresh["cases"][2]["video_sha256"] = "0" * 64
    fresh["checkpoint"]["weights_sha256"] = "0" * 64
    fresh["versions"]["transformers"] = "4.53.0"
    problems = "\n".join(compare_goldens(fresh, committed))
    first, second, third = (c["id"] for c in committed["cases"][:3])
    assert f"{first}.logits[2]" in problems
    assert f"{second}.indices" in problems
    assert f"{third}.video_sha256" in problems
    assert "checkpoint" in problems
    assert "versions.transformers" in problems


def test_comparison_tolerates_rounding_noise_only():
    committed = COMMITTED["float32"]
    fresh = copy.deepcopy(committed)
    fresh["cases"][0]["logits"][0] += 2e-7  # float32 rounding of a different thread split
    assert compare_goldens(fresh, committed) == []


# --- the transformers-4 view of a transformers-5 checkpoint ---------------------------------------------------


def test_transformers4_view_moves_only_bookkeeping(tmp_path: Path):
    src, dst = tmp_path / "v5", tmp_path / "v4"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({
        "dtype": "float32",
        "text_config": {"rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"}, "rms_norm_eps": 1e-5},
        "perceiver_config": {"rms_norm_eps": 1e-6},
    }))
    (src / "tokenizer_config.json").write_text(json.dumps({
        "backend": "tokenizers", "tokenizer_class": "TokenizersBackend", "extra_special_tokens": ["<end_of_utterance>"],
        "pad_token": "<unk>",
    }))
    image_processor = {"do_image_splitting": False, "size": {"longest_edge": 980, "shortest_edge": 378}}
    (src / "processor_config.json").write_text(json.dumps({
        "image_processor": image_processor, "image_seq_len": 64, "processor_class": "Idefics2Processor",
    }))
    (src / "tokenizer.json").write_text('{"tokenizer": "bytes kept as they are"}')
    # a one-tensor safetensors file: 8-byte header length, JSON header, data
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (src / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\x00\x00\x80\x3f")

    changes = write_transformers4_view(src, dst)

    assert (dst / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert weights_sha256(dst) == weights_sha256(src)
    assert (dst / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    config = json.loads((dst / "config.json").read_text())
    assert config["text_config"] == {"rope_theta": 1000000.0, "rms_norm_eps": 1e-5}
    assert config["perceiver_config"] == {"rms_norm_eps": 1e-6}  # the eps mismatch is kept, not "fixed"
    assert config["torch_dtype"] == "float32" and "dtype" not in config
    tokenizer_config = json.loads((dst / "tokenizer_config.json").read_text())
    assert tokenizer_config == {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "additional_special_tokens": ["<end_of_utterance>"],
        "model_input_names": ["input_ids", "attention_mask"],
        "pad_token": "<unk>",
    }
    assert json.loads((dst / "preprocessor_config.json").read_text()) == {
        **image_processor, "processor_class": "Idefics2Processor",
    }
    assert json.loads((dst / "processor_config.json").read_text()) == {
        "image_seq_len": 64, "processor_class": "Idefics2Processor",
    }
    assert len(changes) == 7


def test_transformers4_view_refuses_rope_scaling_it_cannot_express(tmp_path: Path):
    src = tmp_path / "v5"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(
        {"text_config": {"rope_parameters": {"rope_theta": 1e4, "rope_type": "yarn", "factor": 4.0}}}
    ))
    (src / "tokenizer_config.json").write_text("{}")
    (src / "processor_config.json").write_text("{}")
    with pytest.raises(ValueError, match="no transformers 4 equivalent"):
        write_transformers4_view(src, tmp_path / "v4")
