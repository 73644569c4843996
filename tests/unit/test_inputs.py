"""What reaches the model is what the checkpoint's processor makes, bit for bit, although most of it is now made
in the task threads (``Preprocessor.prepare``) and the rest on the device (``ScoringRecipe.collate``).

The oracle is the processor itself, called as the model card calls it (PIL images, ``padding="longest"``); the
parity tests (tests/unit/test_parity.py) tie that processor to mantis' transformers-4 goldens.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.model_fixtures import qwen2_vl_stand_in, stand_in_checkpoint  # noqa: F401
from videoscore.core.variants import resolve_model
from videoscore.worker.model.idefics2.inputs import Idefics2Video, value_table
from videoscore.worker.model.preprocess import Preprocessor, ScoreRequest
from videoscore.worker.model.prompt import build_eval_prompt
from videoscore.worker.model.scorer import Scorer

CPU = torch.device("cpu")


def noise_frames(count: int, height: int, width: int, seed: int) -> list[np.ndarray]:
    """Random RGB frames: every uint8 value occurs, so every entry of the value table is exercised."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


# A batch that pads in every way the processor pads: 720p (resized down to 980 wide), 360p (up to 378 high),
# a portrait clip, tiny frames, and different frame counts (the shorter videos get all-zero images).
MIXED = [
    ScoreRequest(noise_frames(5, 720, 1280, seed=1), "a red fox in the snow"),
    ScoreRequest(noise_frames(3, 360, 640, seed=2), "a much longer prompt about a dog that runs along a beach"),
    ScoreRequest(noise_frames(4, 1080, 608, seed=3), "portrait"),
    ScoreRequest(noise_frames(2, 32, 48, seed=4), "tiny"),
]


def processor_inputs(processor, requests: list[ScoreRequest]) -> dict[str, torch.Tensor]:
    texts = [build_eval_prompt(r.prompt, len(r.frames)) for r in requests]
    images = [[Image.fromarray(frame) for frame in r.frames] for r in requests]
    return dict(processor(text=texts, images=images, padding="longest", return_tensors="pt"))


def our_inputs(preprocessor: Preprocessor, requests: list[ScoreRequest], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    prepared = [preprocessor.prepare(r) for r in requests]
    table = preprocessor.recipe.value_table(preprocessor.processor)
    return preprocessor.recipe.collate(prepared, pad_token_id=preprocessor.pad_token_id, table=table, device=CPU,
                                       dtype=dtype)


def assert_bit_identical(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    assert set(ours) == set(theirs)
    for key in ("input_ids", "attention_mask", "pixel_attention_mask"):
        assert ours[key].shape == theirs[key].shape, key
        assert torch.equal(ours[key].long(), theirs[key].long()), key
    want = theirs["pixel_values"].to(dtype)  # the model casts the processor's float32 to its dtype
    got = ours["pixel_values"]
    assert got.dtype == dtype and got.shape == want.shape
    assert torch.equal(got.view(torch.int16 if dtype != torch.float32 else torch.int32),
                       want.view(torch.int16 if dtype != torch.float32 else torch.int32)), "pixel values differ in bits"


@pytest.fixture(scope="module")
def preprocessor(stand_in_checkpoint: Path) -> Preprocessor:
    return Preprocessor.load(resolve_model(str(stand_in_checkpoint)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_a_mixed_batch_is_bit_identical_to_the_processors(preprocessor: Preprocessor, dtype: torch.dtype) -> None:
    assert_bit_identical(our_inputs(preprocessor, MIXED, dtype), processor_inputs(preprocessor.processor, MIXED), dtype)


def test_with_image_splitting_too(stand_in_checkpoint: Path) -> None:
    splitting = Preprocessor.load(resolve_model(str(stand_in_checkpoint)))
    splitting.processor.image_processor.do_image_splitting = True
    requests = MIXED[:2] + MIXED[3:]
    assert_bit_identical(our_inputs(splitting, requests, torch.float32),
                         processor_inputs(splitting.processor, requests), torch.float32)


def test_the_value_table_is_the_processors_rescale_and_normalize_of_every_uint8_value(preprocessor) -> None:
    ramp = np.broadcast_to(np.arange(256, dtype=np.uint8).reshape(16, 16, 1), (16, 16, 3)).copy()
    image_processor = preprocessor.processor.image_processor
    expected = image_processor.normalize(image_processor.rescale(ramp.transpose(2, 0, 1), 1 / 255),
                                         image_processor.image_mean, image_processor.image_std)
    table = value_table(image_processor)
    assert table.dtype == torch.float32 and table.shape == (3, 256)
    assert np.array_equal(table.numpy()[:, ramp[..., 0]], expected)


def test_what_waits_for_the_device_is_uint8_and_a_quarter_of_the_processors_bytes(preprocessor) -> None:
    [request] = MIXED[:1]
    prepared = preprocessor.prepare(request)
    video = prepared.inputs
    assert isinstance(video, Idefics2Video) and video.pixels.dtype == torch.uint8
    theirs = processor_inputs(preprocessor.processor, [request])["pixel_values"]
    assert video.pixels.numel() == theirs.numel() and video.pixels.element_size() * 4 == theirs.element_size()
    assert prepared.shape_key == (5, 551, 980)  # what the engine groups batches by
    assert prepared.input_ids == processor_inputs(preprocessor.processor, [request])["input_ids"][0].tolist()


def test_the_scorer_gives_the_scores_of_the_processors_inputs(stand_in_checkpoint: Path) -> None:
    batch = [MIXED[1], MIXED[3]]  # padded in size and in image count, and small enough for a quick forward
    with Scorer.load(resolve_model(str(stand_in_checkpoint)), device="cpu") as scorer:
        ours = [s.as_list() for s in scorer.score(batch).scores]
        with torch.inference_mode():
            theirs = scorer._require_model()(**processor_inputs(scorer._processor, batch)).logits.tolist()
    assert ours == theirs  # identical inputs, identical forward: equal to the last bit


def test_qwen2_vl_prepared_in_task_threads_equals_its_batch_encode(qwen2_vl_stand_in: Path) -> None:
    preprocessor = Preprocessor.load(resolve_model(str(qwen2_vl_stand_in)))
    requests = [ScoreRequest(noise_frames(6, 90, 160, seed=5), "a boat"),
                ScoreRequest(noise_frames(4, 120, 120, seed=6), "a longer prompt about a sailing boat at dusk")]
    prepared = [preprocessor.prepare(r) for r in requests]
    ours = preprocessor.recipe.collate(prepared, pad_token_id=preprocessor.pad_token_id, table=None, device=CPU,
                                       dtype=torch.float32)
    theirs = preprocessor.processor.encode([r.prompt for r in requests], [r.frames for r in requests])
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key


def test_a_refused_prompt_costs_no_resize(preprocessor, monkeypatch: pytest.MonkeyPatch) -> None:
    resized: list[int] = []
    original = preprocessor.recipe.prepare_pixels

    def counting(*args, **kwargs):
        resized.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(preprocessor.recipe, "prepare_pixels", counting)
    with pytest.raises(Exception, match="tokens"):
        preprocessor.prepare(dataclasses.replace(MIXED[0], prompt="word " * 20000))
    assert resized == []
