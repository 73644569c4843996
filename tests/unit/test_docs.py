"""The README stays true: its settings table lists every setting, and it gives the two commands."""

from __future__ import annotations

from pathlib import Path

from videoscore.core.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_readme_settings_table() -> None:
    missing = [name for name in Settings.model_fields if f"`VIDEOSCORE_{name.upper()}`" not in README]
    assert missing == []


def test_the_readme_gives_the_demo_and_test_commands() -> None:
    assert "make demo" in README and "make test" in README
