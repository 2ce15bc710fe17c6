"""Property-based fuzzing of the CLI (hypothesis) and the table of refusals of issue 13.

Property: whatever the arguments, ``edgevit`` exits 0, 1 or 2 (3 would be a bug), prints no traceback
without ``--debug``, and writes nothing when it fails. Arguments are drawn mostly from wrong values, so
most cases end in the validation layer before any export; the first value of each choice is a wrong one
because hypothesis starts (and shrinks) towards the first.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgevit import cli
from edgevit.errors import EXIT_BUG
from tests.faults_support import edgevit_props, snapshot, tiny_onnx


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Things a user may point edgevit at: their own folder and files, broken artifacts and checkpoints."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "photos").mkdir()
    (root / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 not edgevit's")
    (root / "notes.txt").write_text("mine")
    tiny_onnx(root / "theirs.onnx", size=64)
    tiny_onnx(root / "bad-meta.onnx", metadata=edgevit_props(**{"edgevit.input_size": "[64,"}), size=64)
    tiny_onnx(root / "ours.onnx", metadata=edgevit_props(**{"edgevit.input_size": "[64, 64]"}), size=64)
    whole = (root / "ours.onnx").read_bytes()
    (root / "cut.onnx").write_bytes(whole[: len(whole) // 3])
    torch.save({"hook": os.system}, root / "evil.pth")
    torch.save({"w": torch.full((2,), float("nan"))}, root / "nan.pth")
    return root


@contextlib.contextmanager
def _in(folder: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


def run_main(folder: Path, argv: list[str]) -> tuple[int, str]:
    """``edgevit ARGV`` in this process (the fuzzing budget cannot pay an interpreter start-up per case)."""
    err = io.StringIO()
    with _in(folder), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.main(argv)
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, err.getvalue()


MODELS = ["no-such-model", "", "s2aformer-mini", "S2AFormer_Mini", "mat-t"]
OUTPUTS = ["photos", ".", "notes.txt", "theirs.onnx", "ours.onnx", "notes.txt/sub/m.onnx", "new.onnx", "new-ir"]
ARTIFACTS = ["missing.onnx", "photos", "theirs.onnx", "bad-meta.onnx", "cut.onnx", "notes.txt", "ours.onnx"]


def _flag(name: str, values: list[str]) -> st.SearchStrategy[list[str]]:
    return st.one_of(st.just([]), st.sampled_from(values).map(lambda v: [name, v]))


def _export() -> st.SearchStrategy[list[str]]:
    flags = st.tuples(
        _flag("--to", ["bogus", "tensorrt", "openvino", "onnx"]),
        _flag("--input-size", ["63", "abc", "0", "-64", "100000", "64x", "64x96", "64"]),
        _flag("--batch", ["0", "-1", "x", "2"]),
        _flag("--opset", ["5", "99", "-1", "x", "18"]),
        _flag("--option", ["=", "x", "num_classes=-1", "features_only=True", "sampler=bogus", "ffn_ratios=abc"]),
        _flag("--precision", ["bogus", "int8", "fp16"]),
        _flag("--weights", ["missing.pth", "photos", "evil.pth", "nan.pth"]),
        _flag("--rtol", ["-1", "x", "1e-4"]),
        _flag("-o", OUTPUTS),
        st.sampled_from([[], ["--force"]]),
    )
    return st.tuples(st.sampled_from(MODELS), flags).map(
        lambda mf: ["export", mf[0], *[a for f in mf[1] for a in f], "--no-verify"])


def _verify() -> st.SearchStrategy[list[str]]:
    flags = st.tuples(_flag("--threads", ["-1", "0", "x", "2"]), _flag("--batch", ["0", "-3", "7"]),
                      _flag("--runtime", ["bogus", "tensorrt", "openvino", "onnxruntime"]),
                      _flag("--weights", ["evil.pth", "photos", "nan.pth"]))
    return st.tuples(st.sampled_from(MODELS), st.sampled_from(ARTIFACTS), flags).map(
        lambda t: ["verify", t[0], t[1], *[a for f in t[2] for a in f]])


def _other() -> st.SearchStrategy[list[str]]:
    return st.one_of(
        st.tuples(st.sampled_from(MODELS), _flag("--input-size", ["abc", "100000", "63", "0"])).map(
            lambda t: ["info", t[0], *t[1]]),
        st.lists(st.sampled_from(["--frobnicate", "list", "--family", "x", "--json", "--help", "-o", "--debug"]),
                 max_size=4))


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(argv=st.one_of(_export(), _verify(), _other()))
@example(argv=["verify", "", "theirs.onnx"])  # found by this test: an empty model name and no metadata was a bug
def test_every_outcome_is_an_exit_code_without_traceback_and_failures_write_nothing(workdir: Path,
                                                                                 argv: list[str]) -> None:
    before = snapshot(workdir)
    code, err = run_main(workdir, argv)
    try:
        assert code in (0, 1, 2), (argv, code, err)
        if "--debug" not in argv:
            assert "Traceback" not in err, (argv, err)
        if code != 0:
            assert snapshot(workdir) == before, (argv, err)
    finally:  # a successful export is allowed to write; put the folder back for the next case
        for extra in sorted(set(snapshot(workdir)) - set(before), key=len, reverse=True):
            path = workdir / extra
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


# The refusals the issue lists, each one line, exit 2, and before any export work.
REFUSALS = [
    (["export", "s2aformer-mini", "--to", "openvino", "-o", "photos"], "no edgevit metadata"),
    (["export", "s2aformer-mini", "--to", "openvino", "-o", "theirs.onnx"], "is a file, not a folder"),
    (["export", "s2aformer-mini", "--to", "openvino", "-o", "."], "no edgevit metadata"),
    (["export", "s2aformer-mini", "-o", "theirs.onnx", "--force"], "is not an edgevit ONNX (no edgevit metadata)"),
    (["export", "s2aformer-mini", "--opset", "5"], "ONNX opset 5 is not supported; choose 18..23"),
    (["export", "s2aformer-mini", "--opset", "99"], "ONNX opset 99 is not supported"),
    (["export", "s2aformer-mini", "--input-size", "100000"], "needs at least 111.8 GiB"),
    (["export", "s2aformer-mini", "--option", "num_classes=-1"], "num_classes takes integers of at least 1"),
    (["export", "s2aformer-mini", "--option", "features_only=True"], "--option cannot set features_only: use --features-only instead"),
    (["export", "s2aformer-mini", "--option", "ffn_ratios=abc"], "does not take model option 'ffn_ratios'"),
    (["verify", "s2aformer-mini", "ours.onnx", "--threads", "-1"], "--threads must be a whole number"),
    (["verify", "", "theirs.onnx"], "carries no edgevit metadata; name the model"),
    (["verify", "s2aformer-mini", "bad-meta.onnx"], "'edgevit.input_size' is not valid JSON"),
    (["verify", "s2aformer-mini", "ours.onnx"], "output 'logits' has shape"),
    (["verify", "s2aformer-mini", "ours.onnx", "--weights", "photos"], "is a directory"),
    (["verify", "s2aformer-mini", "ours.onnx", "--weights", "evil.pth"], "never runs code"),
]


@pytest.mark.parametrize(("argv", "words"), REFUSALS, ids=[" ".join(a[2:]) for a, _ in REFUSALS])
def test_refusals_are_one_line_exit_2_and_write_nothing(workdir: Path, argv: list[str], words: str) -> None:
    before = snapshot(workdir)
    code, err = run_main(workdir, argv)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], err
    assert snapshot(workdir) == before
    print(f"edgevit {' '.join(argv)}\n  -> rc {code}: {lines[0]}")


def test_a_bug_is_exit_3_not_a_user_error(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fuzz property above must be able to fail: an unexpected exception is exit 3."""
    monkeypatch.setattr("edgevit.pipeline.parse_model_options", lambda pairs: 1 / 0)
    code, err = run_main(workdir, ["export", "s2aformer-mini"])
    assert code == EXIT_BUG and "internal error (ZeroDivisionError" in err and "Traceback" not in err


def test_debug_is_decided_per_invocation_never_carried_over(workdir: Path) -> None:
    """A ``--debug`` run earlier in the same process (a notebook, a test session) must not turn the next
    run's one-line error into a traceback: CI once failed 21 tests this way."""
    argv = ["export", "no-such-model", "--to", "onnx"]
    code, err = run_main(workdir, ["--debug", *argv])
    assert code == 2 and "Traceback" in err, err
    code, err = run_main(workdir, argv)
    assert code == 2 and [ln for ln in err.splitlines() if ln.strip()] == [err.strip()], err
    res = CliRunner().invoke(cli.app, argv)  # the typer app alone (no main), as the in-process tests call it
    assert res.exit_code == 2 and "Traceback" not in res.stderr, res.output
