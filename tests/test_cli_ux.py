"""What a new user reads first: ``--help``, ``edgevit list``, ``edgevit info`` and path errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgevit import runtimes
from edgevit.cli import app
from edgevit.errors import ArtifactError

runner = CliRunner()


def _table(*args: str) -> str:
    res = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    return res.stdout


@pytest.mark.parametrize("command", ["list", "info", "export", "verify", "bench", "report"])
def test_help_has_no_bool_or_str_tags(command: str) -> None:
    text = _table(command, "--help")
    assert "<bool>" not in text and "<str>" not in text
    if command == "export":
        assert "<int>" in text  # the informative tags stay


def test_list_prints_paper_figures_as_printed() -> None:
    text = _table("list", "--family", "A2Mamba")
    row = next(line for line in text.splitlines() if "a2mamba-t " in line)
    cells = [c.strip() for c in re.split(r"[│|]", row) if c.strip()]
    assert cells[2:5] == ["15", "2.7", "83.0"], cells  # Table II prints 15 M, 2.7 G, 83.0 %
    row = next(line for line in _table("list", "--family", "S2AFormer").splitlines() if "s2aformer-l " in line)
    assert "12.53" in row  # not rounded to 3 significant digits


def test_info_states_real_input_constraints_and_separates_memory() -> None:
    text = _table("info", "a2mamba-n")
    assert "multiple of 1" not in text and "at least 64" in text
    lines = text.splitlines()
    speed = next(i for i, line in enumerate(lines) if "speed (paper)" in line)
    memory = next(i for i, line in enumerate(lines) if "memory (paper)" in line)
    assert all(" MB " not in line for line in lines[speed:memory])
    assert "images/s" not in lines[memory] and " MB " in lines[memory]
    assert "multiple of 32" in _table("info", "s2aformer-mini")


@pytest.mark.parametrize("source", ["missing.onnx", "artifacts/missing-ir", "./missing"])
def test_a_missing_path_is_no_such_file_not_an_unknown_model(source: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArtifactError, match="no such file"):
        runtimes.load(source)


def test_help_keeps_bracketed_text() -> None:
    """typer renders help as rich markup, which silently eats ``[word]`` (``edgevit[tensorrt]`` became
    ``edgevit``): every bracketed token of every option's help must survive into ``--help``."""
    import typer.main

    group = typer.main.get_command(app)
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        tokens = {t for p in command.params for t in re.findall(r"\w*\\?\[[^\]\s]*\]", p.help or "")}
        if not tokens:
            continue
        rendered = re.sub(r"[\s│]", "", _table(name, "--help"))
        for token in tokens:
            assert token.replace("\\[", "[") in rendered, f"`edgevit {name} --help` lost {token!r}"
