"""BatchNorm folding before PT2E quantization: the folded graph computes the eager module's function, in the
three shapes torchao's own fold gets wrong (a BN chain, a conv with other readers, a grouped transposed conv),
and the PT2E int8 result of such a module stays close to fp32."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from edgevit.quantization.fx_bn_fold import BATCH_NORMS, CONVS, fold_batch_norms


def _random_bn(channels: int, seed: int) -> nn.BatchNorm2d:
    """A BN far from the identity, so dropping or misapplying it is a large error."""
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, generator=g) * 2 + 0.5)
        bn.bias.copy_(torch.randn(channels, generator=g))
        bn.running_mean.copy_(torch.randn(channels, generator=g))
        bn.running_var.copy_(torch.rand(channels, generator=g) * 3 + 0.2)
    return bn


class BnHazards(nn.Module):
    """conv -> BN -> BN (EMSNet's downsample + next block's norm), a conv read by a BN *and* a residual add,
    and a grouped transposed conv -> BN."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn_a, self.bn_b = _random_bn(8, 1), _random_bn(8, 2)
        self.shared = nn.Conv2d(8, 8, 1)
        self.bn_c = _random_bn(8, 3)
        self.up = nn.ConvTranspose2d(8, 8, 2, 2, groups=2)
        self.bn_d = _random_bn(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn_b(self.bn_a(self.stem(x)))
        y = self.shared(x)
        x = self.bn_c(y) + y
        return self.bn_d(self.up(torch.relu(x)))


def _exported(model: nn.Module, x: torch.Tensor) -> torch.fx.GraphModule:
    return torch.export.export(model.eval(), (x,)).module()


def test_folding_keeps_the_function_and_leaves_no_bn_after_a_conv() -> None:
    torch.manual_seed(0)
    model, x = BnHazards().eval(), torch.randn(2, 3, 16, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graph = _exported(model, x)
    assert fold_batch_norms(graph) == 4
    with torch.no_grad():
        ref, got = model(x), graph(x)
    assert ((ref - got).abs().max() / ref.abs().max()).item() < 1e-5  # fp32 rounding of the scaled weights
    assert not [n for n in graph.graph.nodes if n.target in BATCH_NORMS and n.args[0].target in CONVS]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # new parameters, not in place


@pytest.mark.skipif(importlib.util.find_spec("executorch") is None, reason="needs executorch (torchao)")
def test_pt2e_int8_of_a_bn_chain_stays_close_to_fp32() -> None:
    """Without the fold, prepare_pt2e drops bn_b (measured: 75 % logit error on emsnet-xxtiny)."""
    from edgevit.quantization.executorch_pt2e import quantize_xnnpack

    torch.manual_seed(0)
    model = BnHazards().eval()
    samples = [torch.randn(1, 3, 16, 16).numpy() for _ in range(8)]
    quantized, _ = quantize_xnnpack(model, samples, rules=())
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        ref, got = model(x), quantized(x)
    assert ((ref - got).abs().max() / ref.abs().max()).item() < 0.05  # int8 noise of four layers
