"""Manifests are read strictly: every bad row is reported by line number, and defaults fill what rows omit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from videoscore.producer.manifest import ManifestError, is_manifest, read_manifest


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_a_path_ending_in_jsonl_or_csv_is_a_manifest_and_a_uri_is_not() -> None:
    assert is_manifest("jobs.jsonl") and is_manifest("runs/jobs.CSV") and is_manifest("a.ndjson")
    assert not is_manifest("s3://bucket/jobs.csv") and not is_manifest("file:///x/a.jsonl")
    assert not is_manifest("clip.mp4")


def test_jsonl_rows_become_requests_with_defaults_for_missing_fields(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "m.jsonl", [
        {"video_uri": "s3://b/1.mp4", "prompt": "a cat"},
        "",
        {"video_uri": "s3://b/2.mp4", "prompt": "a dog", "batch": "own", "priority": "high", "tags": {"k": "v"}},
    ])
    manifest = read_manifest(path, max_prompt_chars=100, defaults={"batch": "run42", "priority": None})
    assert manifest.errors == [] and manifest.lines == [1, 3]
    first, second = manifest.requests
    assert (first.batch, first.priority) == ("run42", "normal")
    assert (second.batch, second.priority, second.tags) == ("own", "high", {"k": "v"})


def test_every_bad_jsonl_row_is_reported_by_line_number(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "m.jsonl", [
        {"video_uri": "s3://b/1.mp4", "prompt": "fine"},
        "{not json",
        ["a", "list"],
        {"video_uri": "http://x/1.mp4", "prompt": "p"},
        {"video_uri": "s3://b/1.mp4", "prompt": "x" * 101},
        {"video_uri": "s3://b/1.mp4", "prompt": "p", "model": "nobody/Nothing"},
        {"video_uri": "s3://b/1.mp4"},
    ])
    manifest = read_manifest(path, max_prompt_chars=100)
    assert len(manifest.requests) == 1
    assert [e.line for e in manifest.errors] == [2, 3, 4, 5, 6, 7]
    fragments = ["not valid JSON", "expected a JSON object", "s3:// or file://", "limit is 100", "unknown model",
                 "prompt: Field required"]
    for error, fragment in zip(manifest.errors, fragments, strict=True):
        assert fragment in error.message, error


def test_csv_rows_take_tag_columns_json_tags_and_booleans_and_report_the_line_a_row_starts(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(
        "video_uri,prompt,tag.run,tags,force\n"
        "s3://b/1.mp4,a cat,r1,\"{\"\"arm\"\": \"\"a\"\"}\",true\n"
        "s3://b/2.mp4,\"a prompt\nover two lines\",r1,,\n"
        "s3://b/3.mp4,p,r1,[1],\n"
        "s3://b/4.mp4,p,r1,,maybe\n"
        "s3://b/5.mp4,p,r1,,,extra\n"
    )
    manifest = read_manifest(path, max_prompt_chars=100)
    first, second = manifest.requests
    assert first.tags == {"run": "r1", "arm": "a"} and first.force is True
    assert second.prompt == "a prompt\nover two lines" and second.force is False
    assert [e.line for e in manifest.errors] == [5, 6, 7]
    assert "tags" in manifest.errors[0].message and "force" in manifest.errors[1].message
    assert "more cells" in manifest.errors[2].message


def test_an_empty_or_missing_manifest_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ManifestError, match="no rows"):
        read_manifest(tmp_path / "empty.jsonl", max_prompt_chars=100)
    with pytest.raises(ManifestError, match="no such file"):
        read_manifest(tmp_path / "absent.csv", max_prompt_chars=100)


def test_the_cli_submits_nothing_when_any_row_is_bad_and_lists_each_one(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "m.jsonl", [
        {"video_uri": "s3://b/1.mp4", "prompt": "fine"},
        {"video_uri": "ftp://b/2.mp4", "prompt": "bad scheme"},
        {"video_uri": "s3://b/3.mp4", "prompt": " "},
    ])
    database = tmp_path / "never-created.db"
    env = {"PATH": "", "COLUMNS": "200", "VIDEOSCORE_DATABASE_URL": f"sqlite:///{database}",
           "VIDEOSCORE_BROKER_URL": "redis://127.0.0.1:1/0"}
    run = subprocess.run([sys.executable, "-m", "videoscore", "submit", str(path)], capture_output=True,
                         text=True, env=env)
    assert run.returncode == 2
    # errors go to stderr: stdout carries only what a script reads (job ids)
    assert f"{path}:2:" in run.stderr and f"{path}:3:" in run.stderr and f"{path}:1:" not in run.stderr
    assert "2 of 3 rows are invalid; nothing was submitted" in run.stderr and run.stdout == ""
    assert not database.exists()


def test_a_model_named_like_a_home_folder_of_no_user_is_an_unknown_model(tmp_path: Path) -> None:
    # found by schemathesis: Path("~nobody").expanduser() raises RuntimeError, which was a 500 in the API
    path = _jsonl(tmp_path / "m.jsonl", [{"video_uri": "s3://b/1.mp4", "prompt": "p", "model": "~no-such-user-x/m"}])
    [error] = read_manifest(path, max_prompt_chars=100).errors
    assert error.line == 1 and "unknown model" in error.message
