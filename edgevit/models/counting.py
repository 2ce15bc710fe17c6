"""Parameter and MAC counting with ``torch.utils.flop_counter.FlopCounterMode``.

One counter for the whole toolkit (tests, ``edgevit list``, bench efficiency). Custom ops (e.g. the
selective scan) register their formula with ``torch.utils.flop_counter.register_flop_formula`` next to
their definition, so they are counted here without a second mechanism.

Papers differ in what they count: thop-style counters see only convolutions and linear layers, others
count attention matmuls too. :class:`MacCount` keeps the categories apart so each paper is compared
under its own convention.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

_CONV_OPS = {"convolution", "_convolution", "conv2d", "conv1d"}
_LINEAR_OPS = {"mm", "addmm"}  # nn.Linear on any rank lowers to mm/addmm
_MATMUL_OPS = {"bmm", "baddbmm", "_scaled_dot_product_efficient_attention",
               "_scaled_dot_product_flash_attention", "_scaled_dot_product_cudnn_attention",
               "edgevit.na_qk", "edgevit.na_av"}  # neighborhood attention's two products (models/ops)


@dataclass(frozen=True)
class MacCount:
    """Multiply-accumulates of one forward pass (1 MAC = 2 FLOPs), split by kind of op."""

    total: int
    by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def conv_linear(self) -> int:
        return self.by_kind.get("conv", 0) + self.by_kind.get("linear", 0)

    def for_convention(self, convention: str) -> int:
        """MACs under a paper's counting convention: ``"conv+linear"`` or ``"all"``."""
        if convention == "conv+linear":
            return self.conv_linear
        if convention == "all":
            return self.total
        raise ValueError(f"unknown MAC convention {convention!r}")


def _kind(op_name: str) -> str:
    base = op_name.split(".")[1] if op_name.startswith("aten.") else op_name
    if base in _CONV_OPS:
        return "conv"
    if base in _LINEAR_OPS:
        return "linear"
    if base in _MATMUL_OPS:
        return "matmul"
    return "other"


def count_params(model: nn.Module) -> int:
    """Unique parameters (shared tensors once; BN running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int], batch: int = 1) -> MacCount:
    """MACs per image of ``model`` on a ``batch x 3 x H x W`` input."""
    x = torch.zeros(batch, 3, *input_size)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    by_kind: dict[str, int] = {}
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        kind = _kind(str(op))
        by_kind[kind] = by_kind.get(kind, 0) + int(flops) // 2 // batch
    return MacCount(total=sum(by_kind.values()), by_kind=by_kind)
