"""The fast stand-in scorer: labelled a stand-in, deterministic, cheap, and keeping a call log that survives
a SIGKILL (each line is written before the score is returned); a scorer the engine and the worker's metering
take as they take the model's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from videoscore.core.errors import PromptTooLongError
from videoscore.core.settings import Settings
from videoscore.core.variants import DEFAULT_MODEL, resolve_model
from videoscore.worker.model.preprocess import PreprocessorProtocol, ScoreRequest
from videoscore.worker.model.scorer import ScorerProtocol
from videoscore.worker.service import metrics, runtime
from videoscore.worker.testing.fast_scorer import (
    FAST_SCORER,
    FastPreprocessor,
    FastScorer,
    build_fast_stand_in,
    is_fast_stand_in,
    prompt_digest,
)


def _frames(value: int) -> list[np.ndarray]:
    return [np.full((32, 32, 3), value, dtype=np.uint8) for _ in range(2)]


def test_the_fast_stand_in_is_a_labelled_stand_in_and_never_the_default(tmp_path: Path) -> None:
    folder = build_fast_stand_in(tmp_path / "fast", call_log_dir=tmp_path / "calls")
    spec = resolve_model(str(folder))
    assert spec.stand_in and is_fast_stand_in(spec.source)
    assert not is_fast_stand_in(DEFAULT_MODEL)


def test_scores_are_deterministic_in_range_and_every_call_is_logged(tmp_path: Path) -> None:
    folder = build_fast_stand_in(tmp_path / "fast", call_log_dir=tmp_path / "calls")
    scorer = FastScorer.load(resolve_model(str(folder)))
    requests = [ScoreRequest(frames=_frames(10), prompt="a"), ScoreRequest(frames=_frames(200), prompt="b")]
    first, again = scorer.score(requests), scorer.score(requests[:1])
    scorer.close()
    assert first.scores[0] == again.scores[0] and first.scores[0] != first.scores[1]
    assert all(1.0 <= v <= 4.0 for s in first.scores for v in s.as_list())
    [log] = (tmp_path / "calls").glob("calls-*.log")
    digests = [line.split()[1] for line in log.read_text().splitlines()]
    assert digests == [prompt_digest("a"), prompt_digest("b"), prompt_digest("a")]


def test_an_over_long_prompt_and_the_fail_marker_raise(tmp_path: Path) -> None:
    scorer = FastScorer.load(resolve_model(str(build_fast_stand_in(tmp_path / "fast", max_tokens=500))))
    with pytest.raises(PromptTooLongError, match="accepts 500"):
        scorer.check_prompt("word " * 1000, 2)
    with pytest.raises(RuntimeError, match="asked to fail"):
        scorer.score([ScoreRequest(frames=_frames(1), prompt="x #stand-in:fail")])


def test_the_workers_metered_scorer_is_the_scorer_it_wraps_and_counts_each_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(runtime.ALTERNATIVE_SCORERS, FAST_SCORER,
                        runtime.ScorerKind(FastScorer.load, FastPreprocessor.load))
    spec = resolve_model(str(build_fast_stand_in(tmp_path / "fast", max_tokens=500)))
    metered, plain = runtime.load_scorer(spec, Settings()), FastScorer.load(spec)
    preprocessor = runtime.load_preprocessor(spec, Settings())
    assert isinstance(metered, ScorerProtocol) and isinstance(plain, ScorerProtocol)
    assert isinstance(preprocessor, PreprocessorProtocol)
    assert (metered.spec, metered.revision, metered.device) == (plain.spec, plain.revision, plain.device)
    requests = [ScoreRequest(frames=_frames(10), prompt="a"), ScoreRequest(frames=_frames(200), prompt="b")]
    batches_before = metrics.REGISTRY.get_sample_value("videoscore_batch_size_count") or 0.0
    prepared = [preprocessor.prepare(request) for request in requests]
    assert metered.score_prepared(prepared).scores == plain.score(requests).scores
    assert metrics.REGISTRY.get_sample_value("videoscore_batch_size_count") == batches_before + 1
    with pytest.raises(PromptTooLongError, match="accepts 500"):
        preprocessor.check_prompt("word " * 1000, 2)
    metered.close()
    plain.close()
