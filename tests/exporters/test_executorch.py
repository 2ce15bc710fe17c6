"""ExecuTorch programs: the XNNPACK-friendly forms equal the originals, lowering reports what the delegate
took, the runtime runs the program to the project tolerance, and bad options fail before any work.

A small conv/BN/LayerNorm/mean network stands in for the families here (lowering a family at 224 takes
minutes); the registry models are covered at small inputs in ``test_mobile_formats``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("executorch", reason="the executorch extra is not installed")

from edgevit import runtimes
from edgevit.artifact import ArtifactMetadata
from edgevit.errors import EdgevitError
from edgevit.exporters.executorch import (
    ExecuTorchManifest,
    ExecuTorchOptions,
    export_executorch,
    manifest_path,
)
from edgevit.exporters.xnnpack_forms import layer_norm_4d, mean_4d, xnnpack_decompositions

SIZE = (16, 16)


def _rel(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a, b = torch.as_tensor(a).detach().double(), torch.as_tensor(b).detach().double()
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("shape,normalized", [((2, 49, 32), (32,)), ((1, 8, 8, 24), (24,)), ((3, 5, 6), (5, 6))])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_form_equals_layer_norm(shape: tuple[int, ...], normalized: tuple[int, ...], affine: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g) * 3 + 1.5  # an offset mean: a form without centring would fail
    w = torch.rand(normalized, generator=g) + 0.5 if affine else None
    b = torch.randn(normalized, generator=g) if affine else None
    out, mean, rstd = layer_norm_4d(x, normalized, w, b, 1e-6)
    ref, ref_mean, ref_rstd = torch.ops.aten.native_layer_norm(x, list(normalized), w, b, 1e-6)
    assert _rel(out, ref) <= 1e-6
    assert mean.shape == ref_mean.shape and _rel(mean, ref_mean) <= 1e-6
    assert rstd.shape == ref_rstd.shape and _rel(rstd, ref_rstd) <= 1e-6


@pytest.mark.parametrize("shape,dims,keepdim", [((2, 49, 32), [1], False), ((2, 49, 32), [-1], True),
                                                ((2, 7, 7, 16), [1, 2], False), ((2, 16, 7, 7), [2, 3], False),
                                                ((4, 10), None, False)])
def test_mean_form_equals_mean(shape: tuple[int, ...], dims: list[int] | None, keepdim: bool) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    ref = torch.ops.aten.mean.dim(x, dims, keepdim)
    out = mean_4d(x, dims, keepdim)
    assert out.shape == ref.shape and _rel(out, ref) <= 1e-6


def test_mean_form_leaves_what_xnnpack_takes() -> None:
    assert mean_4d(torch.randn(1, 4, 5, 5), [2, 3], True) is NotImplemented


class Toy(nn.Module):
    """Conv + BN (folded at export), token LayerNorm, token mean, classifier: the ops the families share."""

    output_names = ("logits",)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.bn = nn.BatchNorm2d(8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x)).flatten(2).transpose(1, 2)
        return self.head(self.norm(y).mean(1))


def _toy() -> nn.Module:
    torch.manual_seed(0)
    model = Toy().eval()
    model.bn.running_mean.uniform_(-0.5, 0.5)
    model.bn.running_var.uniform_(0.5, 2.0)
    return model


def test_forms_leave_no_layer_norm_or_token_mean_in_the_graph() -> None:
    program = torch.export.export(_toy(), (torch.zeros(1, 3, *SIZE),)).run_decompositions(xnnpack_decompositions())
    means = [n for n in program.graph.nodes if n.target is torch.ops.aten.mean.dim]
    assert means and all(n.args[0].meta["val"].dim() == 4 and sorted(n.args[1]) == [2, 3] and n.args[2]
                         for n in means)
    assert not [n for n in program.graph.nodes if "layer_norm" in str(n.target)]
    x = torch.randn(1, 3, *SIZE)
    assert _rel(program.module()(x), _toy()(x)) <= 1e-6


META = ArtifactMetadata(model="toy", input_size=SIZE, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), batch=2)


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, ExecuTorchManifest]]:
    out = tmp_path_factory.mktemp("pte")
    made = {}
    for label, options in {"forms": ExecuTorchOptions(), "plain": ExecuTorchOptions(xnnpack_forms=False),
                           "portable": ExecuTorchOptions(delegate="portable")}.items():
        path = out / f"{label}.pte"
        made[label] = (path, export_executorch(_toy(), path, options, META))
    return made


def test_forms_put_the_whole_toy_in_the_delegate(programs: dict) -> None:
    _, forms = programs["forms"]
    assert forms.backends == ["XnnpackBackend"] and forms.xnnpack_forms
    assert forms.delegation["non_delegated_ops"] == 0 and forms.delegation["outside_compute_share"] == 0.0
    assert forms.delegation["delegated_subgraphs"] == 1
    assert forms.operators == []  # nothing left for a selective build's portable kernels
    _, plain = programs["plain"]
    assert plain.delegation["non_delegated_by_op"] == {"native_layer_norm": 1, "mean": 1}
    assert set(plain.operators) == {"aten::native_layer_norm.out", "aten::mean.out"}
    assert 0 < plain.delegation["outside_compute_share"] < 0.2
    _, portable = programs["portable"]
    assert portable.backends == [] and portable.delegation["outside_compute_share"] == 1.0
    assert "aten::convolution.out" in portable.operators


@pytest.mark.parametrize("label", ["forms", "plain", "portable"])
def test_program_runs_like_pytorch(programs: dict, label: str) -> None:
    path, manifest = programs[label]
    runner = runtimes.load(path, threads=1)
    assert runner.backend == "executorch" and runner.info.threads == 1
    assert runner.inputs[0].name == "input" and runner.inputs[0].shape == (2, 3, *SIZE)
    assert [o.name for o in runner.outputs] == ["logits"] and runner.outputs[0].shape == (2, 10)
    assert runner.metadata == META
    assert runner.info.details["delegate"] == manifest.delegate
    x = np.random.default_rng(0).standard_normal((2, 3, *SIZE), dtype=np.float32)
    out = runner.run(x)["logits"]
    assert _rel(out, _toy()(torch.from_numpy(x)).detach()) <= 1e-4
    again = runner.run(x * 2)["logits"]  # outputs are copies, not views of the program's memory
    assert _rel(out, _toy()(torch.from_numpy(x)).detach()) <= 1e-4 and not np.allclose(out, again)


def test_profile_measures_time_outside_the_delegate(programs: dict) -> None:
    x = np.zeros((2, 3, *SIZE), np.float32)
    inside = runtimes.load(programs["forms"][0]).delegation_profile(x, runs=1)
    assert inside["outside_ms"] == 0.0 and inside["delegate_ms"] > 0
    portable = runtimes.load(programs["portable"][0]).delegation_profile(x, runs=1)
    assert portable["delegate_ms"] == 0.0 and portable["outside_time_share"] == 1.0


def test_manifest_sits_beside_the_program(programs: dict) -> None:
    path, manifest = programs["forms"]
    assert manifest_path(path).name == "forms.pte.json"
    assert ExecuTorchManifest.read(manifest_path(path)) == manifest
    assert manifest.input_shape == [2, 3, *SIZE] and manifest.executorch.startswith("1.")


def test_program_without_manifest_runs_with_generic_names(programs: dict, tmp_path: Path) -> None:
    bare = tmp_path / "bare.pte"
    bare.write_bytes(programs["forms"][0].read_bytes())
    runner = runtimes.load(bare)
    assert runner.metadata is None and [s.name for s in runner.inputs] == ["input0"]
    assert runner.info.details["delegate"].startswith("unknown")


@pytest.mark.parametrize("options,message", [
    ({"delegate": "coreml"}, "unknown ExecuTorch delegate 'coreml'"),
    ({"scan": "custom"}, "decomposed selective scan"),
    ({"scan": "fast"}, "scan"),
])
def test_bad_options_fail_on_construction(options: dict, message: str) -> None:
    with pytest.raises(EdgevitError, match=message):
        ExecuTorchOptions(**options)


def test_dynamic_batch_is_refused_before_lowering(tmp_path: Path) -> None:
    meta = ArtifactMetadata(model="toy", input_size=SIZE, mean=(0,) * 3, std=(1,) * 3, batch=None)
    with pytest.raises(EdgevitError, match="static batch"):
        export_executorch(_toy(), tmp_path / "x.pte", ExecuTorchOptions(), meta)
    assert not list(tmp_path.iterdir())


def test_unreadable_program_is_an_artifact_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pte"
    bad.write_bytes(b"not a program")
    with pytest.raises(EdgevitError, match="ExecuTorch cannot load"):
        runtimes.load(bad)


@pytest.mark.parametrize("a_shape,b_shape", [((2, 3, 5, 4), (2, 3, 4, 6)), ((3, 5, 4), (3, 4, 2))])
def test_matmul_form_equals_matmul(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> None:
    from edgevit.exporters.xnnpack_forms import batched_matmul

    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(a_shape, generator=g), torch.randn(b_shape, generator=g)
    assert _rel(batched_matmul(a, b), a @ b) <= 1e-6
    assert batched_matmul(a, torch.randn(4, 6)) is NotImplemented  # a broadcast: ATen's own form


def test_expand_form_only_replaces_identity_expands() -> None:
    from edgevit.exporters.xnnpack_forms import identity_expand

    x = torch.randn(1, 1, 8)
    assert torch.equal(identity_expand(x, [1, -1, -1]), x)
    assert identity_expand(x, [2, -1, -1]) is NotImplemented


@pytest.mark.parametrize("sizes", [3, [2, 5, 1]])
def test_split_form_equals_split(sizes: int | list[int]) -> None:
    from edgevit.exporters.xnnpack_forms import split_as_slices

    x = torch.randn(2, 8, 4)
    for got, ref in zip(split_as_slices(x, sizes, 1), torch.split(x, sizes, 1), strict=True):
        assert torch.equal(got, ref)
