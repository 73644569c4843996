"""Untrained stand-in for VideoScore-Qwen2-VL: the architecture at toy size, built offline in seconds.

``build_qwen2_vl_stand_in(out_dir, seed)`` writes a folder that ``Scorer.load(resolve_model(folder))`` loads
through exactly the path the published checkpoint takes: ``VideoScoreQwen2VLForSequenceClassification.
from_pretrained`` (weights under mantis' keys ``visual.*``, ``model.*``, ``score.*``), and the tokenizer, chat
template and image-processor settings read by ``videoscore.worker.model.qwen2_vl.recipe.Qwen2VLInputs``.

What is real and what is small:

* the tokenizer is a byte-level BPE trained here on the scoring prompt, the chat template's text and generated
  English, with Qwen2's normaliser (NFC), pre-tokenizer regex and no BOS, followed by Qwen2-VL's fourteen
  special tokens in Qwen's order (``<|endoftext|>`` ... ``<|video_pad|>``); pad is ``<|endoftext|>``, eos
  ``<|im_end|>``, as in Qwen2-VL-7B-Instruct;
* the chat template is Qwen2-VL-Instruct's, verbatim (``QWEN2_VL_CHAT_TEMPLATE``);
* the processor files are laid out as the published checkpoint's (saved by transformers 4.46): a
  ``preprocessor_config.json`` for ``Qwen2VLImageProcessor``, a ``chat_template.json``, and a tokenizer with
  ``tokenizer_class: Qwen2Tokenizer``. transformers 5 cannot write a ``Qwen2VLProcessor`` without torchvision
  (see ``videoscore.worker.model.qwen2_vl.recipe``), so they are written here as JSON;
* the processor's pixel bounds are **small** (``STAND_IN_MIN_PIXELS``/``STAND_IN_MAX_PIXELS``: at most 16
  patches of 28x28 per frame, i.e. 4 video tokens per pair of frames) so a CPU scores a 48-frame video in
  well under a second. The recipe around them is the real one: 8 fps sampling and qwen-vl-utils' resizing
  (which always makes frames of >= 128*28*28 pixels; the processor then shrinks them to its bounds, the
  second, PIL bicubic resize that the published checkpoint does only for frames over its own bound).
  Mantis' Qwen2-VL training script (``mantis/train/scripts/train_qwen2_vl_video_eval.sh``) saved its processor
  with ``min_pixels=256*28*28``, ``max_pixels=640*28*28``; ``PUBLISHED_MIN_PIXELS``/``..._MAX_PIXELS`` keep
  those figures for reference;
* the model is Qwen2-VL's at toy width: a 2-block vision tower (embed 32, 2 heads, 14-pixel patches, 2x2
  merge, temporal patches of 2), a 2-layer Qwen2 text model (hidden 64, 4 heads, 2 KV heads, M-RoPE sections
  [2, 3, 3] of the 8 rotary pairs, theta 1e6, RMSNorm eps 1e-6, 32768 positions), ``tie_word_embeddings``
  false, and the 5-way regression head with its bias. Weights are drawn from ``seed``; the head is biased so
  scores land around 1-4, and the text attention's query/key projections are scaled up
  (``ATTENTION_QK_SCALE``) so that the scores depend visibly on token positions: that is what lets a parity
  test tell mantis' 1-D positions from transformers 5's default M-RoPE ones.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import cast

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2VLConfig

from videoscore.core.variants import STAND_IN_MARKER
from videoscore.worker.model.qwen2_vl.modeling import VideoScoreQwen2VLForSequenceClassification
from videoscore.worker.testing.stand_in import training_corpus

VARIANT = "TIGER-Lab/VideoScore-Qwen2-VL"

# --- sizes ---------------------------------------------------------------------------------------------------
BPE_VOCAB_SIZE = 1536  # learned tokens; the special tokens follow
TEXT_HIDDEN = 64
TEXT_HEADS = 4
MROPE_SECTION = [2, 3, 3]  # sums to head_dim / 2 = 8, split like the real [16, 24, 24]
VISION_EMBED = 32
SCORE_BIAS = 2.5
# Multiplies the text attention's query and key projections: at the default init (std 0.02) attention is
# almost uniform, so which positions the tokens get (mantis' 1-D ones vs M-RoPE's 3-D ones) would move the
# scores by only ~1e-3; at 4x the difference is > 0.02, which a parity test at 1e-4 cannot miss.
ATTENTION_QK_SCALE = 4.0

# --- processor: Qwen2VLImageProcessor's settings, with small pixel bounds (see the module docstring) --------
STAND_IN_MIN_PIXELS = 56 * 56
STAND_IN_MAX_PIXELS = 16 * 28 * 28
PUBLISHED_MIN_PIXELS = 256 * 28 * 28
PUBLISHED_MAX_PIXELS = 640 * 28 * 28
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# Qwen2's special tokens, in the order (and so relative ids) of Qwen2-VL's vocabulary (151643 ... 151656).
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
)
# Qwen2's pre-tokenizer split pattern (the published tokenizer.json's).
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Qwen2-VL-7B-Instruct's chat template (its chat_template.json), which VideoScore-Qwen2-VL's processor carries.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)

README = """# UNTRAINED STAND-IN

This folder is an untrained, randomly initialised stand-in for `{variant}` (seed {seed}).
It has the VideoScore-Qwen2-VL architecture (Qwen2-VL + regression head) at toy size, a tokenizer trained on
generated text, and an image processor with small pixel bounds. Its scores are random numbers: use it for
tests and demos only, never for evaluation.

Rebuild it with `python -m videoscore.worker.testing.stand_in --out <dir> --variant {variant} --seed {seed}`.
"""


def build_qwen2_vl_stand_in(out_dir: Path, seed: int = 0) -> Path:
    """Write a VideoScore-Qwen2-VL stand-in into ``out_dir`` and return the folder. Same seed, same bytes."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed)
    model.save_pretrained(out_dir)
    write_processor_files(out_dir, tokenizer)
    (out_dir / STAND_IN_MARKER).write_text(json.dumps({"variant": VARIANT, "stand_in": True, "seed": seed}) + "\n")
    (out_dir / "README.md").write_text(README.format(variant=VARIANT, seed=seed))
    return out_dir


# --- tokenizer ----------------------------------------------------------------------------------------------

_CHAT_TEXT = (
    "system\nYou are a helpful assistant.",
    "user\n",
    "assistant\n",
)


def _corpus() -> list[str]:
    rng = random.Random(1)
    lines = training_corpus()
    lines += [line for line in _CHAT_TEXT for _ in range(50)]
    rng.shuffle(lines)
    return lines


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A small byte-level BPE with Qwen2's text pipeline and Qwen2-VL's special tokens after the learned ones."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        padding_side="right",
        model_max_length=32768,
    )


def write_processor_files(out_dir: Path, tokenizer: PreTrainedTokenizerFast) -> None:
    """The tokenizer and processor files, laid out as the published (transformers 4.46-era) checkpoint's."""
    tokenizer.backend_tokenizer.save(str(out_dir / "tokenizer.json"))
    added = {
        str(tokenizer.convert_tokens_to_ids(token)): {
            "content": token, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True,
        }
        for token in SPECIAL_TOKENS
    }
    tokenizer_config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                                      "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
                                      "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>",
                                      "<|video_pad|>"],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "model_max_length": 32768,
        "padding_side": "right",
        "chat_template": QWEN2_VL_CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n")
    preprocessor = {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2VLProcessor",
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "min_pixels": STAND_IN_MIN_PIXELS,
        "max_pixels": STAND_IN_MAX_PIXELS,
        "merge_size": 2,
        "patch_size": 14,
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "temporal_patch_size": 2,
    }
    (out_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    (out_dir / "chat_template.json").write_text(json.dumps({"chat_template": QWEN2_VL_CHAT_TEMPLATE}, indent=2) + "\n")


# --- model --------------------------------------------------------------------------------------------------


def build_config(tokenizer: PreTrainedTokenizerFast) -> Qwen2VLConfig:
    """A tiny VideoScore-Qwen2-VL config shaped like the real one (Qwen2-VL-7B + a 5-way regression head)."""

    def ids(token: str) -> int:
        # One token in, one id out (transformers types convert_tokens_to_ids as int | list[int] for both forms).
        return cast(int, tokenizer.convert_tokens_to_ids(token))

    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": TEXT_HIDDEN,
        "intermediate_size": 2 * TEXT_HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": TEXT_HEADS,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "mrope_section": MROPE_SECTION, "rope_theta": 1000000.0},
        "use_sliding_window": False,
        "bos_token_id": ids("<|endoftext|>"),
        "eos_token_id": ids("<|im_end|>"),
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision_config = {
        "depth": 2,
        "embed_dim": VISION_EMBED,
        "hidden_size": TEXT_HIDDEN,  # the merger's output: the text width
        "hidden_act": "quick_gelu",
        "mlp_ratio": 4,
        "num_heads": 2,
        "in_channels": 3,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    # num_labels and pad_token_id reach PreTrainedConfig.__post_init__ as **kwargs at run time; transformers'
    # dataclass_transform signature lists only the declared fields.
    return Qwen2VLConfig(  # type: ignore[call-arg]
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
        num_labels=5,
        problem_type="regression",
        pad_token_id=tokenizer.pad_token_id,
    )


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int) -> VideoScoreQwen2VLForSequenceClassification:
    """Random weights from ``seed``, the head biased toward 1-4, attention made position-sensitive."""
    config = build_config(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VideoScoreQwen2VLForSequenceClassification(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(ATTENTION_QK_SCALE)
            layer.self_attn.k_proj.weight.mul_(ATTENTION_QK_SCALE)
        model.score.weight.normal_(0.0, 0.1, generator=generator)
        model.score.bias.normal_(SCORE_BIAS, 0.3, generator=generator)
    return model
