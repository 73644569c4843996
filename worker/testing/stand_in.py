"""Untrained stand-in checkpoints: the VideoScore architecture at toy size, built offline in seconds.

This module owns ``build_stand_in_checkpoint`` and its CLI
(``python -m videoscore.worker.testing.stand_in --out DIR``). A stand-in is a folder that loads through
exactly the same ``from_pretrained`` path as the real weights: an Idefics2 config with the real processor
settings (no image splitting, 980/378 edges, 64 image tokens per frame), a byte-level BPE tokenizer
trained here on the scoring prompt plus generated English, and random weights drawn from a seed. Its scores
are meaningless; ``videoscore.json`` marks it so everywhere.
``--variant TIGER-Lab/VideoScore-Qwen2-VL`` builds the Qwen2-VL family's stand-in
(``videoscore.worker.testing.stand_in_qwen2_vl``).

Two details keep it useful for parity tests (see the field notes): the perceiver keeps its own RMSNorm eps
(1e-6, text 1e-5) as the real configs do, and the connector's projection is scaled down so the perceiver's
inputs are small enough for that eps to change the output.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import cast

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import Idefics2Config, Idefics2ImageProcessorPil, Idefics2Processor, PreTrainedTokenizerFast
from transformers.models.idefics2.configuration_idefics2 import Idefics2PerceiverConfig

from videoscore.core.variants import DEFAULT_MODEL, STAND_IN_MARKER, VARIANTS
from videoscore.worker.model.idefics2.modeling import VideoScoreForSequenceClassification
from videoscore.worker.model.prompt import REGRESSION_QUERY_PROMPT

# --- sizes: tiny, but every knob the real checkpoint has is present and set the same way ---------------------
VOCAB_SIZE = 1536
TEXT_HIDDEN = 64
VISION_HIDDEN = 32
IMAGE_SEQ_LEN = 64  # latents per frame, as in the real checkpoints (cheap at this width)
TEXT_RMS_EPS = 1e-5  # the real Mistral text config
PERCEIVER_RMS_EPS = 1e-6  # the real perceiver config (mantis uses the text eps anyway)
# Shrinks the connector's output so the perceiver's RMSNorm inputs have a mean square near 1e-5, where
# 1e-6 vs 1e-5 makes a visible difference in the scores.
CONNECTOR_SCALE = 0.5
SCORE_BIAS = 2.5  # stand-in scores land around 1–4, like real ones, while being clearly random

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2 as in Mistral's tokenizer
IMAGE_TOKENS = ("<fake_token_around_image>", "<image>", "<end_of_utterance>")  # appended, as in Idefics2
PAD_TOKEN = "<unk>"  # Idefics2 pads with <unk> (id 0); byte-level BPE never emits it for ordinary text

README = """# UNTRAINED STAND-IN

This folder is an untrained, randomly initialised stand-in for `{variant}` (seed {seed}).
It has the VideoScore architecture (Idefics2 + regression head) at toy size and a tokenizer trained on
generated text. Its scores are random numbers: use it for tests and demos only, never for evaluation.

Rebuild it with `python -m videoscore.worker.testing.stand_in --out <dir> --variant {variant} --seed {seed}`.
"""


def build_stand_in_checkpoint(out_dir: Path, variant: str = DEFAULT_MODEL, seed: int = 0) -> Path:
    """Write a stand-in checkpoint for ``variant`` into ``out_dir`` and return the folder.

    Deterministic: the same seed gives the same weights and the same tokenizer.
    """
    if variant not in VARIANTS:
        raise ValueError(f"no stand-in for {variant!r}; known variants: {', '.join(sorted(VARIANTS))}")
    if VARIANTS[variant].family == "qwen2_vl":
        from videoscore.worker.testing.stand_in_qwen2_vl import (
            build_qwen2_vl_stand_in,  # the Qwen2-VL family's own builder
        )

        return build_qwen2_vl_stand_in(out_dir, seed=seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    model = build_model(processor.tokenizer, seed)

    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    (out_dir / STAND_IN_MARKER).write_text(json.dumps({"variant": variant, "stand_in": True, "seed": seed}) + "\n")
    (out_dir / "README.md").write_text(README.format(variant=variant, seed=seed))
    return out_dir


# --- tokenizer ----------------------------------------------------------------------------------------------

_SUBJECTS = (
    "a golden retriever", "an old fisherman", "two children", "a red sports car", "a herd of elephants",
    "a robot", "a young woman", "a lighthouse", "a flock of birds", "an astronaut", "a small boat",
    "a street musician", "a panda", "a steam train", "the city skyline", "a dancer", "a chef",
    "a dragon", "a cat", "a waterfall", "a hot air balloon", "a knight", "a jellyfish", "a farmer",
)
_ACTIONS = (
    "walks slowly across", "runs through", "flies over", "floats above", "dances in", "drives along",
    "sleeps beside", "jumps into", "climbs", "looks at", "swims under", "spins around", "rests on",
    "appears from", "moves toward", "glows inside", "crosses", "explores",
)
_PLACES = (
    "a snowy forest", "the busy market", "a quiet beach at sunset", "the haunted house at night",
    "a neon-lit street in the rain", "a mountain lake", "the desert", "a field of sunflowers",
    "an ancient temple", "the ocean floor", "a crowded stadium", "a foggy harbor", "the village gate",
    "a kitchen", "outer space", "a bamboo grove", "a frozen river", "the rooftop garden",
)
_STYLES = (
    "cinematic lighting", "slow motion", "4k, highly detailed", "aerial shot", "handheld camera",
    "soft colors", "time-lapse", "close-up", "wide angle", "in the style of an oil painting",
    "dramatic shadows", "vivid colors", "anime style", "black and white film", "drone footage", "macro lens",
    "studio lighting", "documentary style", "shallow depth of field", "pixel art", "watercolor", "8k resolution",
)
_ADJECTIVES = (
    "beautiful", "tiny", "giant", "colorful", "mysterious", "happy", "lonely", "shiny", "ancient", "futuristic",
    "wooden", "glowing", "dark", "bright", "peaceful", "chaotic", "realistic", "surreal", "blurry", "sharp",
)
_TIMES = (
    "in the morning", "at night", "during a storm", "at dawn", "in winter", "in summer", "under the moonlight",
    "at noon", "while it snows", "after the rain",
)
_FILLER = (
    "The camera pans to the left as the light changes.",
    "As they reach the house, a mysterious sound in the air adds to the suspense.",
    "Near the Elephant Gate village, they approach the haunted house at night.",
    "Rajiv feels anxious, but Bhavesh encourages him.",
    "The scene is calm, then suddenly everything moves very fast.",
    "Rain falls on the window while people hurry past the shop.",
    "A quick brown fox jumps over the lazy dog; the sky turns orange and purple.",
    "Every frame should look sharp, smooth and consistent with the previous one.",
    "She opens the door, smiles, and waves goodbye to her friends before the train leaves.",
    "Thousands of lanterns rise into the sky over the river during the festival.",
    "Waves crash against the rocks while seagulls circle overhead in the strong wind.",
    "He pours hot coffee into a white cup, steam rising, on a wooden table by the window.",
)


def training_corpus(n_sentences: int = 2000) -> list[str]:
    """The text the stand-in tokenizer learns from: the scoring prompt plus generated video prompts."""
    rng = random.Random(0)  # the tokenizer is the same for every seed; only the weights vary
    lines = [REGRESSION_QUERY_PROMPT] * 50
    for _ in range(n_sentences):
        sentence = (
            f"{rng.choice(_SUBJECTS)} {rng.choice(_ACTIONS)} {rng.choice(_ADJECTIVES)} {rng.choice(_PLACES)}"
            f" {rng.choice(_TIMES)}, {rng.choice(_STYLES)}."
        )
        lines.append(sentence[0].upper() + sentence[1:])
        if rng.random() < 0.2:
            lines.append(rng.choice(_FILLER))
    return lines


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Train a small byte-level BPE (any UTF-8 text tokenizes) and wrap it as a Mistral-like fast tokenizer."""
    tok = Tokenizer(models.BPE())
    # Byte-level, so no input ever falls back to <unk>; no prefix space, like Mistral's SentencePiece.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    # Mistral's tokenizer prepends <s> and appends nothing.
    bos_id = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in IMAGE_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token=PAD_TOKEN,
        padding_side="right",
        # The real one has no practical limit either; the text model's positions bound a prompt.
        model_max_length=32768,
    )


def build_processor(tokenizer: PreTrainedTokenizerFast) -> Idefics2Processor:
    """The VideoScore processor settings: whole frames (no splitting), edges 378..980, 64 tokens per frame."""
    image_processor = Idefics2ImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": 980, "shortest_edge": 378}
    )
    return Idefics2Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=IMAGE_SEQ_LEN)


# --- model --------------------------------------------------------------------------------------------------


def build_config(tokenizer: PreTrainedTokenizerFast) -> Idefics2Config:
    """A tiny Idefics2 regression config shaped like the real one."""
    pad_id = tokenizer.pad_token_id
    text_config = {
        "model_type": "mistral",
        "vocab_size": len(tokenizer),
        "hidden_size": TEXT_HIDDEN,
        "intermediate_size": 4 * TEXT_HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,  # as the real text config
        "sliding_window": 4096,  # as Mistral-7B v0.1
        "rms_norm_eps": TEXT_RMS_EPS,
        "pad_token_id": pad_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "tie_word_embeddings": False,
    }
    vision_config = {
        "hidden_size": VISION_HIDDEN,
        "intermediate_size": 2 * VISION_HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "patch_size": 14,
        "image_size": 980,  # 70×70 position buckets, so resized frames map to positions as in the real one
    }
    perceiver_config = {
        # Explicit: left at its 4096 default, Idefics2Config would overwrite the perceiver eps with the text eps.
        "hidden_size": TEXT_HIDDEN,
        "rms_norm_eps": PERCEIVER_RMS_EPS,
        "resampler_n_latents": IMAGE_SEQ_LEN,
        "resampler_depth": 2,
        "resampler_n_heads": 4,
        "resampler_head_dim": 16,
        "num_key_value_heads": 2,
    }
    # pad_token_id and num_labels reach PreTrainedConfig.__post_init__ as **kwargs at run time; transformers'
    # dataclass_transform signature lists only the declared fields.
    return Idefics2Config(  # type: ignore[call-arg]
        text_config=text_config,
        vision_config=vision_config,
        perceiver_config=perceiver_config,
        # One token in, one id out (transformers types convert_tokens_to_ids as int | list[int] for both forms).
        image_token_id=cast(int, tokenizer.convert_tokens_to_ids("<image>")),
        pad_token_id=pad_id,
        num_labels=5,
        problem_type="regression",
        tie_word_embeddings=False,
    )


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int) -> VideoScoreForSequenceClassification:
    """Random weights from ``seed``, with the connector shrunk and the head biased toward 1–4."""
    config = build_config(tokenizer)
    perceiver = cast(Idefics2PerceiverConfig, config.perceiver_config)  # built by Idefics2Config.__post_init__
    assert perceiver.rms_norm_eps == PERCEIVER_RMS_EPS, "Idefics2Config overwrote the perceiver eps"
    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = VideoScoreForSequenceClassification(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.model.connector.modality_projection.down_proj.weight.mul_(CONNECTOR_SCALE)
        model.score.weight.normal_(0.0, 0.1, generator=generator)
        model.score.bias.normal_(SCORE_BIAS, 0.3, generator=generator)
    # The model class applied mantis' eps to its modules; save the config as published (perceiver 1e-6), so
    # loading the stand-in exercises the same fix-up as loading the real weights.
    model.config.perceiver_config.rms_norm_eps = PERCEIVER_RMS_EPS
    return model


# --- CLI ----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m videoscore.worker.testing.stand_in", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write the checkpoint into")
    parser.add_argument("--variant", default=DEFAULT_MODEL, help=f"variant to imitate (default {DEFAULT_MODEL})")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    args = parser.parse_args(argv)
    try:
        folder = build_stand_in_checkpoint(args.out, variant=args.variant, seed=args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    print(f"wrote UNTRAINED STAND-IN for {args.variant} (seed {args.seed}) to {folder} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
