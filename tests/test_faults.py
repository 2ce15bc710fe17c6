"""Fault injection, fast part: the output-path policy, temporaries, write failures, corrupted artifacts,
input dtypes, checkpoints and the CLI's error model, on tiny hand-built artifacts (no export).

Exports killed, run concurrently or on a full disk are in ``test_faults_export.py``; CLI fuzzing in
``test_faults_fuzz.py``.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto

from edgevit import cli, runtimes
from edgevit.artifact import ArtifactMetadata, atomic_output, claim_output, sweep_temporaries, temporary_name
from edgevit.errors import (
    EXIT_BUG,
    ArtifactError,
    ArtifactWriteError,
    CheckpointError,
    EdgevitError,
    InputTypeError,
    OutputPathError,
    ResourceLimitError,
    VerificationError,
)
from edgevit.formats import get_format
from edgevit.pipeline import artifact_kind
from tests.faults_support import (
    REPO,
    can_enforce_permissions,
    edgevit_props,
    one_error_line,
    permission_checks_apply,
    snapshot,
    tiny_ir,
    tiny_onnx,
)

IR_MANIFEST = json.dumps({"format": "openvino-ir", "files": {"xml": "model.xml", "bin": "model.bin"},
                          "metadata": edgevit_props()})
ONNX_FILE, OPENVINO_IR, TENSORRT_ENGINE = (artifact_kind(get_format(f)) for f in ("onnx", "openvino", "tensorrt"))


# ----- output-path policy ---------------------------------------------------------------------------------


@pytest.fixture()
def user_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"not edgevit's")
    return folder


def test_an_ir_never_replaces_a_users_folder_file_or_the_current_directory(tmp_path: Path, user_folder: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    foreign_onnx = tiny_onnx(tmp_path / "theirs.onnx")
    monkeypatch.chdir(user_folder)
    before = snapshot(tmp_path)
    for target, why in ((user_folder, "no edgevit metadata"), (foreign_onnx, "is a file"),
                        (Path("."), "no edgevit metadata")):
        for force in (False, True):
            with pytest.raises(OutputPathError, match=why):
                claim_output(target, OPENVINO_IR, force=force)
    assert snapshot(tmp_path) == before


def test_a_previous_edgevit_ir_is_replaced_only_with_force(tmp_path: Path) -> None:
    ir = tiny_ir(tmp_path / "ir", manifest=IR_MANIFEST)
    with pytest.raises(OutputPathError, match="previous edgevit OpenVINO IR; pass --force"):
        claim_output(ir, OPENVINO_IR)
    assert claim_output(ir, OPENVINO_IR, force=True) == ir
    (ir / "notes.txt").write_text("mine")  # a user's file inside: replacing the folder would delete it
    with pytest.raises(OutputPathError, match=r"holds files edgevit did not write \(notes.txt\)"):
        claim_output(ir, OPENVINO_IR, force=True)


def test_onnx_onto_a_folder_is_written_inside_it_and_onto_foreign_files_refused(tmp_path: Path,
                                                                                user_folder: Path) -> None:
    assert claim_output(user_folder, ONNX_FILE, default_name="m.onnx") == user_folder / "m.onnx"
    assert claim_output(f"{tmp_path}/new/", ONNX_FILE, default_name="m.onnx") == tmp_path / "new" / "m.onnx"
    with pytest.raises(OutputPathError, match="is not an edgevit ONNX"):
        claim_output(tiny_onnx(tmp_path / "theirs.onnx"), ONNX_FILE, force=True)
    (tmp_path / "notes.onnx").write_text("a text file")
    with pytest.raises(OutputPathError, match="is not an edgevit ONNX"):
        claim_output(tmp_path / "notes.onnx", ONNX_FILE, force=True)
    ours = tiny_onnx(tmp_path / "ours.onnx", metadata=edgevit_props())
    with pytest.raises(OutputPathError, match="pass --force"):
        claim_output(ours, ONNX_FILE)
    assert claim_output(ours, ONNX_FILE, force=True) == ours


def test_an_engine_is_ours_only_with_its_manifest(tmp_path: Path) -> None:
    from edgevit.exporters.tensorrt import EngineManifest

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0" * 16)
    with pytest.raises(OutputPathError, match="is not an edgevit TensorRT engine"):
        claim_output(engine, TENSORRT_ENGINE, force=True)
    shape = [1, 3, 64, 64]
    EngineManifest("10.0", "gpu", "8.9", "fp16", "input", shape, shape, shape, ["logits"],
                   metadata=edgevit_props()).write(tmp_path / "m.json")
    assert claim_output(engine, TENSORRT_ENGINE, force=True) == engine
    engine.unlink()  # a lone manifest of the user's name is not edgevit's to overwrite
    with pytest.raises(OutputPathError, match="m.json already exists"):
        claim_output(engine, TENSORRT_ENGINE, force=True)


def test_a_file_where_a_folder_is_expected(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    for kind in (ONNX_FILE, OPENVINO_IR):
        with pytest.raises(OutputPathError, match="is a file, not a folder"):
            claim_output(tmp_path / "file" / "sub" / "out", kind)


def test_unwritable_target_is_refused_up_front(tmp_path: Path) -> None:
    """chmod does not stop root: as root the check runs in a child without CAP_DAC_OVERRIDE."""
    if not can_enforce_permissions():
        pytest.skip("running as root without CAP_SETPCAP: chmod cannot make a folder unwritable here")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    tmp_path.chmod(0o755)
    code = ("from edgevit.artifact import claim_output\nfrom edgevit.formats import get_format\n"
            "from edgevit.pipeline import artifact_kind\n"
            f"claim_output({str(locked / 'm.onnx')!r}, artifact_kind(get_format('onnx')))")
    res = subprocess.run(check=False, args=[sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, preexec_fn=permission_checks_apply)
    assert "OutputPathError" in res.stderr and "permission denied" in res.stderr, res.stderr


# ----- temporaries and atomic placement --------------------------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporaries_of_dead_or_old_runs_are_swept_and_a_moved_aside_artifact_restored(tmp_path: Path) -> None:
    dead, live = _dead_pid(), subprocess.Popen(["sleep", "30"])
    try:
        stale_file = tmp_path / f".a.onnx.edgevit-tmp-{dead}-0a1b.onnx"
        stale_file.write_text("partial")
        stale_dir = tmp_path / f".ir.edgevit-tmp-{dead}-0a1c"
        stale_dir.mkdir()
        (stale_dir / "model.xml").write_text("partial")
        running = tmp_path / f".b.onnx.edgevit-tmp-{live.pid}-0a1d.onnx"
        running.write_text("being written")
        old = tmp_path / f".c.onnx.edgevit-tmp-{live.pid}-0a1e.onnx"
        old.write_text("from a day ago")
        os.utime(old, (time.time() - 2 * 86400,) * 2)
        moved = tmp_path / f".prev.edgevit-old-{dead}-0a1f"
        moved.mkdir()
        (moved / "manifest.json").write_text("{}")
        users = tmp_path / ".a.onnx.tmp"
        users.write_text("the user's own hidden file")
        sweep_temporaries(tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([running.name, "prev", users.name])
        assert (tmp_path / "prev" / "manifest.json").exists()
    finally:
        live.kill()
        live.wait()


def test_temporary_names_carry_the_pid() -> None:
    assert f"edgevit-tmp-{os.getpid()}-" in temporary_name(Path("/x/m.onnx")).name


def test_atomic_output_leaves_nothing_on_failure_and_writes_with_umask_permissions(tmp_path: Path) -> None:
    final = tmp_path / "new" / "deeper" / "m.onnx"
    with pytest.raises(RuntimeError), atomic_output(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("exporter crashed")
    assert list(tmp_path.iterdir()) == []  # not even the folders it created
    old = os.umask(0o022)
    try:
        with atomic_output(final) as tmp:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)  # as mkstemp would
            os.close(fd)
        with atomic_output(tmp_path / "ir", folder=True) as tmp:
            (tmp / "model.xml").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(final.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "ir").stat().st_mode) == 0o755


_FULL_DISK_CHILD = textwrap.dedent("""
    import resource, sys
    from pathlib import Path
    from edgevit.artifact import atomic_output
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
    final = Path(sys.argv[1])
    with atomic_output(final, folder=final.suffix == "") as tmp:
        target = tmp / "model.bin" if final.suffix == "" else tmp
        with open(target, "wb") as f:
            f.write(b"x" * (4 << 20))
""")


@pytest.mark.parametrize("name", ["m.onnx", "ir"])
def test_a_full_disk_is_one_line_naming_path_and_cause_and_keeps_the_previous_artifact(tmp_path: Path,
                                                                                      name: str) -> None:
    """``ulimit -f`` (RLIMIT_FSIZE) makes writes fail with EFBIG like a full disk does with ENOSPC."""
    final = tmp_path / name
    if name == "ir":
        final.mkdir()
        (final / "model.bin").write_text("previous")
    else:
        final.write_text("previous")
    res = subprocess.run(check=False, args=[sys.executable, "-c", _FULL_DISK_CHILD, str(final)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert f"ArtifactWriteError: cannot write {final}: file too large" in res.stderr, res.stderr
    assert "previous artifact there is kept" in res.stderr
    kept = final / "model.bin" if name == "ir" else final
    assert kept.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_write_failure_names_a_full_disk(tmp_path: Path) -> None:
    with pytest.raises(ArtifactWriteError, match="No space left on device; nothing was written"), \
            atomic_output(tmp_path / "m.onnx"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ----- corrupted artifacts ----------------------------------------------------------------------------------


def test_corrupted_onnx_metadata_names_the_file_and_the_field(tmp_path: Path) -> None:
    bad = tiny_onnx(tmp_path / "bad.onnx", metadata=edgevit_props(**{"edgevit.input_size": "[8, 8"}))
    with pytest.raises(ArtifactError, match=r"bad.onnx.*'edgevit.input_size' is not valid JSON"):
        runtimes.load(bad, "onnxruntime")
    wrong = tiny_onnx(tmp_path / "wrong.onnx", metadata=edgevit_props(**{"edgevit.mean": '"blue"'}))
    with pytest.raises(ArtifactError, match=r"'edgevit.mean' should be a list of numbers"):
        runtimes.load(wrong, "onnxruntime")


def test_truncated_onnx_is_one_line(tmp_path: Path) -> None:
    whole = tiny_onnx(tmp_path / "whole.onnx", metadata=edgevit_props(), size=64).read_bytes()
    (tmp_path / "cut.onnx").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ArtifactError, match="ONNX Runtime cannot load"):
        runtimes.load(tmp_path / "cut.onnx")


def test_corrupted_ir_manifest_and_missing_weights(tmp_path: Path) -> None:
    ir = tiny_ir(tmp_path / "ir", manifest='{"format": "openvino-ir", "metadata": {')
    with pytest.raises(ArtifactError, match=r"manifest.json' is not valid JSON"):
        runtimes.load(ir)
    (ir / "manifest.json").write_text('{"metadata": [1, 2]}')
    with pytest.raises(ArtifactError, match=r"field 'metadata' should be a JSON object"):
        runtimes.load(ir)
    (ir / "manifest.json").write_text(IR_MANIFEST)
    (ir / "model.bin").unlink()
    with pytest.raises(ArtifactError, match="is missing model.bin, the IR's weights"):
        runtimes.load(ir)


def test_metadata_round_trip_still_parses() -> None:
    meta = ArtifactMetadata("s2aformer-mini", (64, 64), (0.5,) * 3, (0.5,) * 3, None, extra={"scan": "custom"})
    assert ArtifactMetadata.from_props(meta.to_props()) == meta


# ----- input dtypes ------------------------------------------------------------------------------------------


def test_runners_refuse_lossy_input_dtypes(tmp_path: Path) -> None:
    runner = runtimes.load(tiny_onnx(tmp_path / "f.onnx"), "onnxruntime")
    x = np.linspace(-2, 2, 3 * 64, dtype=np.float64).reshape(1, 3, 8, 8)
    np.testing.assert_array_equal(runner.run(x)["logits"], (2 * x).astype(np.float32))  # float64: documented cast
    for bad in (np.uint8, np.int64, np.bool_, np.complex64):
        with pytest.raises(InputTypeError, match=f"is {np.dtype(bad)}, but the onnxruntime model takes float32"):
            runner.run(np.ones((1, 3, 8, 8), dtype=bad))
    u8 = runtimes.load(tiny_onnx(tmp_path / "u8.onnx", dtype=TensorProto.UINT8), "onnxruntime")
    assert u8.run(np.full((1, 3, 8, 8), 100, np.uint8))["logits"].max() == 200
    for bad in (np.float32, np.int64):
        with pytest.raises(InputTypeError, match="takes uint8.*raw uint8 NHWC"):
            u8.run(np.full((1, 3, 8, 8), 100, dtype=bad))


def test_torch_runner_refuses_integer_images() -> None:
    runner = runtimes.load(torch.nn.Identity())
    with pytest.raises(InputTypeError, match="normalise images"):
        runner.run(np.zeros((1, 3, 8, 8), np.uint8))


def test_thread_counts_are_checked_before_loading(tmp_path: Path) -> None:
    for bad in (-1, 0, 1.5):
        with pytest.raises(EdgevitError, match="--threads must be a whole number of at least 1"):
            runtimes.load(tmp_path / "absent.onnx", threads=bad)


# ----- checkpoints and the reference --------------------------------------------------------------------------


def test_checkpoint_directory_code_running_pickle_and_nan_weights(tmp_path: Path) -> None:
    from edgevit.models import create_model
    from edgevit.models.checkpoint import load_checkpoint, read_state_dict

    with pytest.raises(CheckpointError, match="is a directory"):
        read_state_dict(tmp_path)
    torch.save({"w": torch.zeros(1), "hook": os.system}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="Python objects other than tensors.*never runs code") as info:
        read_state_dict(tmp_path / "evil.pth")
    assert "weights_only" not in str(info.value)
    model = create_model("s2aformer-mini")
    sd = model.state_dict()
    first = next(k for k, v in sd.items() if v.is_floating_point())
    sd[first] = torch.full_like(sd[first], float("nan"))
    torch.save(sd, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match=f"holds NaN values in {first}"):
        load_checkpoint(model, tmp_path / "nan.pth")


def test_verification_says_when_the_reference_itself_is_not_finite() -> None:
    from edgevit.verify import verify_runner

    class Nan(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean((2, 3)) * float("nan")

    class Mean(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean((2, 3))

    with pytest.raises(VerificationError, match="reference output 'output' itself is not finite"):
        verify_runner(runtimes.load(Nan()), runtimes.load(Mean()), 1, (8, 8))


def test_memory_estimate_refuses_before_allocating() -> None:
    from edgevit.resources import check_forward_fits

    model = torch.nn.Conv2d(3, 16, 3, padding=1)  # 64 B/px of activation + 12 B/px of input
    assert check_forward_fits(model, "conv", (1000, 1000), 1, (16, 16), available=100 << 20) == 76_000_000
    with pytest.raises(ResourceLimitError, match=r"conv at 100000x100000, batch 1 needs at least 111.8 GiB"):
        check_forward_fits(model, "conv", (100_000, 100_000), 1, (16, 16), available=8 << 30)
    with pytest.raises(ResourceLimitError, match="needs at least 0.1 GiB"):  # the activation, not the input, decides
        check_forward_fits(model, "conv", (1000, 1000), 1, (16, 16), available=50 << 20)


def test_the_opset_actually_written_is_recorded() -> None:
    """--opset 5 used to write opset 18 and record 5; the range is refused up front (formats) and the
    metadata now reads the file's own opset_import."""
    from onnx import helper

    from edgevit.exporters.onnx import written_opset

    proto = helper.make_model(helper.make_graph([], "g", [], []), opset_imports=[helper.make_opsetid("edgevit", 1),
                                                                                helper.make_opsetid("", 21)])
    assert written_opset(proto) == 21


# ----- the CLI's error model ------------------------------------------------------------------------------------


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(argv))
    return exit_info.value.code, capsys.readouterr().err


@pytest.fixture()
def broken_info(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug inside a command: any exception that is not an EdgevitError."""
    from edgevit.models import registry

    def boom(name: str) -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(registry, "get_model_card", boom)
    monkeypatch.setattr("edgevit.models.get_model_card", boom)
    monkeypatch.setitem(cli._state, "debug", False)


def test_a_bug_is_one_line_pointing_at_debug(capsys: pytest.CaptureFixture[str], broken_info: None) -> None:
    code, err = _main(capsys, "info", "s2aformer-mini")
    assert code == EXIT_BUG
    line = one_error_line(err)
    assert "internal error (ZeroDivisionError: division by zero)" in line and "--debug" in line
    code, err = _main(capsys, "info", "s2aformer-mini", "--debug")  # accepted after the command too
    assert code == EXIT_BUG and "Traceback" in err and "ZeroDivisionError" in err


def test_user_and_usage_errors_are_one_line_exit_2(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cli._state, "debug", False)
    code, err = _main(capsys, "info", "no-such-model")
    assert code == 2 and "no-such-model" in one_error_line(err)
    code, err = _main(capsys, "export", "s2aformer-mini", "--batch", "many")
    assert code == 2 and "Invalid value for '--batch'" in one_error_line(err) and "--help" in err
    code, err = _main(capsys, "frobnicate")
    assert code == 2 and "No such command" in one_error_line(err)


def test_unwritable_errors_outside_artifacts_are_user_errors() -> None:
    assert cli._environment_error(OSError(errno.ENOSPC, "No space left on device", "/x/r.json")) == \
        "cannot write /x/r.json: No space left on device; free some space or choose a writable --output"
    assert cli._environment_error(ValueError("x")) is None


def test_a_corrupted_sidecar_manifest_is_one_line(tmp_path: Path) -> None:
    """Engines and .pte programs keep their manifest beside them; a corrupted one names the file and the fix."""
    from edgevit.artifact import JsonManifest
    from edgevit.errors import ArtifactError
    from edgevit.exporters.tensorrt import EngineManifest

    bad = tmp_path / "m.engine.json"
    bad.write_text('{"tensorrt": ')
    with pytest.raises(ArtifactError, match=r"cannot read manifest .*m\.engine\.json.*--to tensorrt"):
        EngineManifest.read(bad)
    assert issubclass(EngineManifest, JsonManifest)
