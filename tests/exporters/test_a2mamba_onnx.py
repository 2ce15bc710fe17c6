"""A2Mamba to ONNX: the selective scan in both export modes against the sequential reference, and
whole-model exports verified in ONNX Runtime with randomised official-layout weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgevit import pipeline
from edgevit.artifact import ArtifactMetadata
from edgevit.errors import EdgevitError
from edgevit.exporters.onnx_scan import export_selective_scan
from edgevit.formats import format_options
from edgevit.models.ops.selective_scan import selective_scan_reference
from tests.models.a2mamba_reference import CONFIGS, random_state_dict
from tests.models.test_selective_scan import scan_inputs

FORBIDDEN = {"Loop", "Scan", "If"}


def run_ort(proto: onnx.ModelProto, args: tuple[torch.Tensor, ...]) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)})[0]


def rel(out: np.ndarray, ref: torch.Tensor) -> float:
    r = ref.double().numpy()
    return float(np.abs(out.astype(np.float64) - r).max() / np.abs(r).max())


@pytest.mark.parametrize("c,strong", [(32, False), (48, True)])
@pytest.mark.parametrize("mode", ["decomposed", "custom"])
def test_scan_export_equals_sequential_reference(mode: str, c: int, strong: bool) -> None:
    args = scan_inputs(1, c, 3136, strong_decay=strong, seed=c)
    proto = export_selective_scan(args, mode)
    ops = [(n.domain, n.op_type) for n in proto.graph.node]
    if mode == "decomposed":
        assert not {t for _, t in ops} & FORBIDDEN and all(d in ("", "ai.onnx") for d, _ in ops)
    else:
        assert ops == [("edgevit", "SelectiveScan")]
        assert {f.name for f in proto.functions} == {"SelectiveScan", "SegsumScan"}
        body_ops = {n.op_type for f in proto.functions for n in f.node}
        assert not body_ops & FORBIDDEN
    assert rel(run_ort(proto, args), selective_scan_reference(*args)) <= 1e-5


def test_scan_export_rejects_a_break_of_any_decay_or_chunk_sum() -> None:
    """Every Exp (a chunk's decays, the carried states' decay into a chunk) and every ReduceSum (a chunk's total
    log-decay, carried one level up) of the exported scan matters: changed (Exp -> Softplus, sum -> mean), the
    scan's output leaves the reference by more than verification's 1e-4. Decays are weak here (|a| ~ 0.01 per step)
    so that states live through every carry level; in a2mamba-n's stage-3 scans (reference weights) a carried
    state's decay moves the logits too little for whole-model verification to see (test_mutation.py's
    KNOWN_WEAK_AT), so this is where that op is checked."""
    g = torch.Generator().manual_seed(5)
    c, length = 8, 784  # 98 chunks of 8 -> 13 -> 2: three carry levels
    u, bs = torch.randn(1, c, length, generator=g), torch.randn(1, 1, length, generator=g)
    delta = torch.randn(1, c, length, generator=g) * 0.5 - 4  # dt ~ 0.02
    args = (u, delta, -torch.exp(torch.randn(c, 1, generator=g) - 1), bs, torch.zeros(c))
    proto = export_selective_scan(args, "decomposed")
    reference = selective_scan_reference(*args)
    assert rel(run_ort(proto, args), reference) <= 1e-5
    mutated = 0
    for i, node in enumerate(proto.graph.node):
        swap = {"Exp": "Softplus", "ReduceSum": "ReduceMean"}.get(node.op_type)
        if swap is None:
            continue
        mutant = onnx.ModelProto()
        mutant.CopyFrom(proto)
        mutant.graph.node[i].op_type = swap
        assert rel(run_ort(mutant, args), reference) > 1e-3, f"{node.op_type} #{i} -> {swap} went unseen"
        mutated += 1
    assert mutated >= 3 * 2 + 2  # two Exps per chunk level, a sum per carry


@pytest.fixture(scope="module")
def nano_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("a2mamba") / "a2mamba_nano.pth"
    torch.save({"model": random_state_dict(CONFIGS["n"], seed=21)}, path)
    return path


def _ops(path: Path) -> list[tuple[str, str]]:
    return [(n.domain, n.op_type) for n in onnx.load(str(path)).graph.node]


# 200x260 (150 s) is slow: the fast suite keeps 224 here and 200x260 in the eager reference test
@pytest.mark.parametrize("size", [(224, 224), pytest.param((200, 260), marks=pytest.mark.slow)])
def test_nano_decomposed_export_parity(tmp_path: Path, nano_weights: Path, size: tuple[int, int]) -> None:
    # 200x260: odd, non-square, per-axis dilations, global bias resized 49 -> 63 tokens
    report = pipeline.export("a2mamba-n", output=tmp_path / "n.onnx", input_size=size,
                             weights=str(nano_weights))
    assert report.parity is not None and report.parity.passed and report.parity.worst_rel <= 1e-4
    assert report.parity.top1_agreement == 1.0
    ops = _ops(report.path)
    assert not {t for _, t in ops} & FORBIDDEN and all(d in ("", "ai.onnx") for d, _ in ops)
    proto = onnx.load(str(report.path))
    meta = ArtifactMetadata.from_props({p.key: p.value for p in proto.metadata_props})
    assert meta is not None and meta.extra["scan"] == "decomposed" and meta.input_size == size


def test_nano_custom_scan_export_runs_in_ort(tmp_path: Path, nano_weights: Path) -> None:
    report = pipeline.export("a2mamba-n", output=tmp_path / "n.onnx", input_size=(64, 96),
                             weights=str(nano_weights), format_options=format_options("onnx", scan="custom"))
    assert report.parity is not None and report.parity.passed and report.parity.worst_rel <= 1e-4
    ops = _ops(report.path)
    assert ops.count(("edgevit", "SelectiveScan")) == sum(CONFIGS["n"].depths[:3])  # one per A2SSM
    assert "CumSum" not in {t for _, t in ops}  # the scan lives only in the function body
    proto = onnx.load(str(report.path))
    assert {f.name for f in proto.functions} == {"SelectiveScan", "SegsumScan"}
    assert report.metadata.extra["scan"] == "custom"


def test_unknown_scan_mode_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(EdgevitError, match="unknown scan mode"):
        pipeline.export("a2mamba-n", output=tmp_path / "n.onnx", input_size=64, verify=False,
                        format_options=format_options("onnx", scan="loop"))
    assert not (tmp_path / "n.onnx").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["a2mamba-t", "a2mamba-s", "a2mamba-b", "a2mamba-l"])
def test_larger_variants_export_parity(tmp_path: Path, name: str) -> None:
    weights = tmp_path / "w.pth"
    torch.save(random_state_dict(CONFIGS[name[-1]], seed=22), weights)
    report = pipeline.export(name, output=tmp_path / "m.onnx", weights=str(weights))
    assert report.parity is not None and report.parity.passed and report.parity.worst_rel <= 1e-4
    assert not {t for _, t in _ops(report.path)} & FORBIDDEN
