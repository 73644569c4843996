"""Issue 11, the model items: a job with a valid token may name only a registered hub id, the deployment's default
model, or a checkpoint folder inside the operator's model roots, whatever tricks its name plays; a refusal never
says what is on the host; a bad checkpoint folder is a clear refusal, not a 500; one model has one name; and a
model that failed to load fails the next job at once instead of holding the engine again.

Every folder here is real, in tmp_path: the tricks are played on the filesystem the code resolves against.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest

from videoscore.core.errors import InvalidJobError, ModelLoadError, UnknownModelError
from videoscore.core.jobspec import JobRequest, validate_job
from videoscore.core.settings import Settings
from videoscore.core.variants import (
    DEFAULT_MODEL,
    MAX_MODEL_NAME_CHARS,
    STAND_IN_MARKER,
    ModelPolicy,
    ModelSpec,
    resolve_model,
)
from videoscore.worker.model.engine import Engine, ScoreOutcome
from videoscore.worker.model.scorer import ScoreRequest, ScorerProtocol
from videoscore.worker.testing.fast_scorer import FastPreprocessor, FastScorer

QWEN = "TIGER-Lab/VideoScore-Qwen2-VL"


def _checkpoint(folder: Path, marker: object = None, *, raw_marker: str | None = None) -> Path:
    """A folder that looks like a checkpoint: config.json and a videoscore.json (`marker`, or raw text)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    text = raw_marker if raw_marker is not None else json.dumps(marker or {"variant": DEFAULT_MODEL, "stand_in": True})
    (folder / STAND_IN_MARKER).write_text(text)
    return folder


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """/models (the operator's root, with one checkpoint) and /elsewhere (a checkpoint outside it)."""
    _checkpoint(tmp_path / "models" / "ckpt")
    _checkpoint(tmp_path / "elsewhere" / "secret-ckpt")
    (tmp_path / "elsewhere" / "not-a-checkpoint").mkdir()
    return tmp_path


@pytest.fixture
def policy(host: Path) -> ModelPolicy:
    return ModelPolicy(roots=(str(host / "models"),))


def _job(model: str | None = None) -> dict[str, object]:
    job: dict[str, object] = {"video_uri": "s3://videos/clip.mp4", "prompt": "a cat on a skateboard"}
    return job if model is None else {**job, "model": model}


def _refusal(policy: ModelPolicy, model: str) -> str:
    with pytest.raises(UnknownModelError) as caught:
        validate_job(_job(model), max_prompt_chars=100, models=policy)
    assert caught.value.kind == "unknown_model"
    return caught.value.message.replace(repr(model), "<model>")


# --- only the roots: escapes by .. and by symlink -----------------------------------------------------------


def test_a_checkpoint_inside_a_root_is_allowed_and_stored_by_its_real_path(host: Path, policy: ModelPolicy) -> None:
    job = validate_job(_job(str(host / "models" / "ckpt")), max_prompt_chars=100, models=policy)
    assert job.model == os.path.realpath(host / "models" / "ckpt")


@pytest.mark.parametrize("escape", ["models/../elsewhere/secret-ckpt", "models/ckpt/../../elsewhere/secret-ckpt"])
def test_dot_dot_out_of_a_root_is_an_unknown_model(host: Path, policy: ModelPolicy, escape: str) -> None:
    assert (host / escape / "config.json").is_file()  # the escape points at a real checkpoint
    assert "unknown model" in _refusal(policy, str(host / escape))


def test_a_relative_dot_dot_name_is_judged_by_where_it_lands(host: Path, policy: ModelPolicy,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    deep = host / "models" / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    job = validate_job(_job("../../ckpt"), max_prompt_chars=100, models=policy)
    assert job.model == os.path.realpath(host / "models" / "ckpt")  # inside: one absolute name
    assert "unknown model" in _refusal(policy, "../../../elsewhere/secret-ckpt")


def test_a_symlink_in_a_root_that_points_out_of_it_is_an_unknown_model(host: Path, policy: ModelPolicy) -> None:
    (host / "models" / "innocent").symlink_to(host / "elsewhere" / "secret-ckpt")
    (host / "models" / "parent-link").symlink_to(host / "elsewhere")
    assert "unknown model" in _refusal(policy, str(host / "models" / "innocent"))
    assert "unknown model" in _refusal(policy, str(host / "models" / "parent-link" / "secret-ckpt"))


def test_a_symlink_within_a_root_names_the_folder_it_points_at(host: Path, policy: ModelPolicy) -> None:
    (host / "models" / "latest").symlink_to(host / "models" / "ckpt")
    job = validate_job(_job(str(host / "models" / "latest")), max_prompt_chars=100, models=policy)
    assert job.model == os.path.realpath(host / "models" / "ckpt")


def test_a_root_that_is_a_symlink_is_followed_once_at_the_root(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "disk" / "ckpt")
    (tmp_path / "models").symlink_to(tmp_path / "disk")
    policy = ModelPolicy(roots=(str(tmp_path / "models"),))
    job = validate_job(_job(str(tmp_path / "models" / "ckpt")), max_prompt_chars=100, models=policy)
    assert job.model == os.path.realpath(tmp_path / "disk" / "ckpt")


def test_a_root_is_not_a_prefix_of_its_sibling(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "models-private" / "ckpt")
    policy = ModelPolicy(roots=(str(tmp_path / "models"),))
    assert "unknown model" in _refusal(policy, str(tmp_path / "models-private" / "ckpt"))


# --- no filesystem oracle -----------------------------------------------------------------------------------


def test_outside_the_roots_a_checkpoint_a_plain_folder_and_nothing_read_the_same(host: Path,
                                                                                  policy: ModelPolicy) -> None:
    refusals = {_refusal(policy, str(host / "elsewhere" / name))
                for name in ("secret-ckpt", "not-a-checkpoint", "no-such-folder")}
    refusals.add(_refusal(policy, "/etc"))
    assert len(refusals) == 1, refusals
    [message] = refusals
    assert str(host) not in message and "config.json" not in message


def test_inside_a_root_a_plain_folder_and_nothing_read_the_same(host: Path, policy: ModelPolicy) -> None:
    (host / "models" / "empty").mkdir()
    refusals = {_refusal(policy, str(host / "models" / name)) for name in ("empty", "absent")}
    refusals.add(_refusal(policy, str(host / "elsewhere" / "secret-ckpt")))
    assert len(refusals) == 1, refusals


def test_without_roots_no_folder_is_allowed_however_real(host: Path) -> None:
    message = _refusal(ModelPolicy(), str(host / "models" / "ckpt"))
    assert "unknown model" in message and "no model roots" in message
    assert _refusal(ModelPolicy(), str(host / "nothing")) == message


def test_the_refusal_does_not_echo_where_a_symlink_points(host: Path, policy: ModelPolicy) -> None:
    (host / "models" / "innocent").symlink_to(host / "elsewhere" / "secret-ckpt")
    with pytest.raises(UnknownModelError) as caught:
        validate_job(_job(str(host / "models" / "innocent")), max_prompt_chars=100, models=policy)
    assert "elsewhere" not in caught.value.message and "secret" not in caught.value.message


# --- one model, one name ------------------------------------------------------------------------------------


def test_spellings_of_one_folder_store_one_name(host: Path, policy: ModelPolicy) -> None:
    ckpt = host / "models" / "ckpt"
    spellings = [str(ckpt), f"{ckpt}/", f"{ckpt}//", str(ckpt).replace("/models/", "/models//"),
                 f"{host}/models/./ckpt", f"{host}/models/ckpt/../ckpt/"]
    names = {validate_job(_job(s), max_prompt_chars=100, models=policy).model for s in spellings}
    assert names == {os.path.realpath(ckpt)}
    assert {resolve_model(s) for s in spellings} == {resolve_model(str(ckpt))}  # one spec: one engine load


def test_spellings_of_a_hub_id_store_the_hub_id(policy: ModelPolicy) -> None:
    for spelling in (QWEN, "TIGER-Lab//VideoScore-Qwen2-VL", "TIGER-Lab/VideoScore-Qwen2-VL/"):
        assert validate_job(_job(spelling), max_prompt_chars=100, models=policy).model == QWEN


# --- the default model --------------------------------------------------------------------------------------


def test_a_job_naming_no_model_gets_the_deployments_default(host: Path) -> None:
    default = str(host / "elsewhere" / "secret-ckpt")  # outside any root: the operator chose it
    policy = ModelPolicy.of(Settings(model=default))
    assert validate_job(_job(), max_prompt_chars=100, models=policy).model == default
    assert validate_job(_job(""), max_prompt_chars=100, models=policy).model == default
    assert JobRequest.model_validate(_job()).model == ""  # what the API parses first: no model chosen yet
    assert validate_job(_job(), max_prompt_chars=100).model == DEFAULT_MODEL  # no policy: the hub's v1.1


def test_the_default_model_is_allowed_under_any_spelling_and_keeps_the_operators(host: Path) -> None:
    default = f"{host}/elsewhere/secret-ckpt/"
    policy = ModelPolicy(default=default, roots=(str(host / "models"),))
    for spelling in (default, f"{host}/elsewhere//secret-ckpt", f"{host}/models/../elsewhere/secret-ckpt"):
        assert validate_job(_job(spelling), max_prompt_chars=100, models=policy).model == default
    assert "unknown model" in _refusal(policy, str(host / "elsewhere" / "not-a-checkpoint"))


def test_the_settings_open_the_roots(host: Path) -> None:
    policy = ModelPolicy.of(Settings(model_roots=[str(host / "models")]))
    assert validate_job(_job(str(host / "models" / "ckpt")), max_prompt_chars=100, models=policy).model.endswith("ckpt")
    assert Settings().model_roots == []


# --- length limits, before the filesystem -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x" * 256, "/models/" + "y" * 300 + "/ckpt", "a/" * 600])
def test_over_long_names_are_refused_before_touching_the_filesystem(policy: ModelPolicy, name: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def no_filesystem(*args: object, **kwargs: object) -> str:
        raise AssertionError("the filesystem was asked about an over-long name")

    monkeypatch.setattr(os.path, "realpath", no_filesystem)
    with pytest.raises(UnknownModelError, match="too long"):
        resolve_model(name)
    with pytest.raises(UnknownModelError, match="too long"):
        policy.resolve(name)
    with pytest.raises(InvalidJobError, match="model"):  # the total also fails as a field, in the API's words
        validate_job(_job(name), max_prompt_chars=100, models=policy)


def test_a_name_at_the_limits_is_judged_like_any_other(policy: ModelPolicy) -> None:
    name = "/" + "/".join(["z" * 255, "z" * (MAX_MODEL_NAME_CHARS - 255 - 2)])  # both limits, exactly
    assert len(name) == MAX_MODEL_NAME_CHARS
    assert "unknown model" in _refusal(policy, name)
    with pytest.raises(UnknownModelError, match="unknown model"):
        resolve_model(name)  # ENAMETOOLONG from the filesystem is no longer a 500


@pytest.mark.parametrize("name", ["~no-such-user-x/ckpt", "a\x00b", "", "."])
def test_odd_names_are_unknown_models_not_exceptions(policy: ModelPolicy, name: str) -> None:
    with pytest.raises(InvalidJobError):
        validate_job(_job(name or "."), max_prompt_chars=100, models=policy)
    if name:
        with pytest.raises(UnknownModelError):
            resolve_model(name)


# --- a checkpoint folder whose videoscore.json is wrong: a clear refusal, never an exception ---------------


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("{not json", "is not valid JSON"),
        ("\xff\xfe", "is not valid JSON"),
        ('["TIGER-Lab/VideoScore-v1.1"]', "must hold a JSON object"),
        ('"TIGER-Lab/VideoScore-v1.1"', "must hold a JSON object"),
        ("null", "must hold a JSON object"),
        ('{"variant": "someone/Else"}', "names unknown variant"),
        ('{"variant": ["TIGER-Lab/VideoScore-v1.1"]}', "names unknown variant"),
        ("{}", "names unknown variant"),
        ("[" * 50_000, "is not valid JSON"),  # RecursionError in the parser
        ("{}" * 40_000, "is larger than 64 KiB"),
    ],
)
def test_a_bad_videoscore_json_is_an_unknown_model_with_a_reason(host: Path, policy: ModelPolicy, raw: str,
                                                                 fragment: str) -> None:
    folder = _checkpoint(host / "models" / "bad", raw_marker=raw)
    with pytest.raises(UnknownModelError, match=fragment) as caught:
        validate_job(_job(str(folder)), max_prompt_chars=100, models=policy)
    assert str(host) not in caught.value.message.replace(repr(str(folder)), "")
    with pytest.raises(UnknownModelError, match=fragment):
        resolve_model(str(folder))


def test_a_checkpoint_without_videoscore_json_says_what_to_write(host: Path, policy: ModelPolicy) -> None:
    folder = host / "models" / "plain"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(UnknownModelError, match=f"no {STAND_IN_MARKER} naming its variant"):
        validate_job(_job(str(folder)), max_prompt_chars=100, models=policy)


def test_a_videoscore_json_that_is_not_a_file_is_refused_without_reading_it(host: Path, policy: ModelPolicy) -> None:
    folder = host / "models" / "fifo"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    os.mkfifo(folder / STAND_IN_MARKER)  # reading it would block the API forever
    with pytest.raises(UnknownModelError, match=f"no {STAND_IN_MARKER}"):
        validate_job(_job(str(folder)), max_prompt_chars=100, models=policy)


# --- the engine: a failed load is remembered ----------------------------------------------------------------


def _request() -> ScoreRequest:
    return ScoreRequest(frames=[np.zeros((32, 32, 3), dtype=np.uint8)], prompt="a cat")


def _outcome(future: Future[ScoreOutcome]) -> ScoreOutcome | BaseException:
    try:
        return future.result(timeout=30)
    except Exception as exc:  # noqa: BLE001 - the test looks at what the job got
        return exc


def test_a_model_that_failed_to_load_fails_the_second_job_in_milliseconds(host: Path, policy: ModelPolicy) -> None:
    # A checkpoint folder inside the root whose weights are not there: loading it fails, after a while (the
    # hub's case costs minutes; here a sleep stands for it).
    broken = policy.resolve(str(_checkpoint(host / "models" / "no-weights")))
    good = policy.resolve(str(host / "models" / "ckpt"))
    loads: list[str] = []

    def load(spec: ModelSpec) -> ScorerProtocol:
        loads.append(spec.name)
        if spec == broken:
            time.sleep(0.5)
            raise ModelLoadError(f"could not load {spec.label}: no weights in {Path(spec.source).name}")
        return FastScorer(spec, max_tokens=1000, call_log_dir=None)

    engine = Engine(load, lambda spec: FastPreprocessor(spec, max_tokens=1000), batch_size=2, load_retry_after_s=300)
    engine.start()
    try:
        started = time.monotonic()
        first = _outcome(engine.submit(broken, _request()))
        first_s = time.monotonic() - started
        started = time.monotonic()
        second = _outcome(engine.submit(broken, _request()))
        second_s = time.monotonic() - started
        scored = _outcome(engine.submit(good, _request()))
    finally:
        engine.stop()
    assert isinstance(first, ModelLoadError) and first_s >= 0.5
    assert isinstance(second, ModelLoadError) and second.kind == "model_load_error" and second_s < 0.05
    assert "no weights in no-weights" in second.message  # the reason travels with the fast failure
    assert loads.count(broken.name) == 1
    assert isinstance(scored, ScoreOutcome)
