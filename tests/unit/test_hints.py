"""Hints name `simvue-otel` as the user's shell can run it, with arguments quoted and paths
absolute, so a printed command works when pasted (see also the CLI and example tests, which
paste them into a real shell)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from simvue_otel._internal import hints


@pytest.fixture
def bindir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An interpreter in a directory with spaces, and that installation's script beside it."""
    bin_dir = tmp_path / "my env" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text("")
    (bin_dir / "simvue-otel").write_text("")
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    return bin_dir


def test_by_name_when_path_finds_this_installation(
    bindir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hints.shutil, "which", lambda name: str(bindir / name))
    assert hints.program() == "simvue-otel"


def test_by_full_path_when_the_venv_is_not_activated(
    bindir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hints.shutil, "which", lambda name: None)
    assert shlex.split(hints.program()) == [str(bindir / "simvue-otel")]


def test_by_full_path_when_path_finds_another_installation(
    bindir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other" / "simvue-otel"
    other.parent.mkdir()
    other.write_text("")
    monkeypatch.setattr(hints.shutil, "which", lambda name: str(other))
    assert shlex.split(hints.program()) == [str(bindir / "simvue-otel")]


def test_through_the_interpreter_when_no_script_is_found(
    bindir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (bindir / "simvue-otel").unlink()
    monkeypatch.setattr(hints.shutil, "which", lambda name: None)
    assert shlex.split(hints.program()) == [str(bindir / "python"), "-m", "simvue_otel"]


def test_command_quotes_words_and_makes_paths_absolute(
    bindir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hints.shutil, "which", lambda name: str(bindir / name))
    monkeypatch.chdir(tmp_path)
    line = hints.command("send", "--cache", Path("spool dir"), "--note", "it's")
    assert line.startswith("simvue-otel send --cache ")
    assert shlex.split(line) == [
        "simvue-otel", "send", "--cache", str(tmp_path / "spool dir"), "--note", "it's",
    ]  # fmt: skip
