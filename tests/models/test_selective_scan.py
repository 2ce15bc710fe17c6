"""The selective scan (d_state = 1): chunked form and custom op vs the sequential fp64 recurrence,
including chunk boundaries, L = 3136 (stage 1 at 224) and decays strong enough to underflow exp."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from edgevit.models.ops.selective_scan import (
    discretize,
    selective_scan,
    selective_scan_chunked,
    selective_scan_reference,
    softplus_elementwise,
    use_elementwise_softplus,
    use_scan_custom_op,
)


def scan_inputs(b: int, c: int, length: int, strong_decay: bool = False,
                seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, c, length, generator=g)
    delta = torch.randn(b, c, length, generator=g)
    a_logs = torch.randn(c, 1, generator=g)
    if strong_decay:  # dt up to ~25 and |A| up to ~e^5: exp(dt * A) underflows to exactly 0
        delta = delta * 6 + 8
        a_logs = a_logs + 3
    bs = torch.randn(b, 1, length, generator=g)
    bias = torch.randn(c, generator=g)
    return u, delta, -torch.exp(a_logs), bs, bias


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref.double()).abs().max() / ref.double().abs().max())


def _sequential_fp64(u, delta, a, bs, bias):
    """The recurrence h_t = exp(dt_t a) h_{t-1} + dt_t B_t u_t step by step in fp64 (shares no code with edgevit)."""
    u, delta, a, bs, bias = (t.double() for t in (u, delta, a, bs, bias))
    dt = torch.log1p(torch.exp(delta + bias[:, None]))  # softplus; |delta + bias| stays far below 20 here
    h = torch.zeros_like(u[..., 0])
    out = torch.empty_like(u)
    for t in range(u.shape[-1]):
        h = torch.exp(dt[..., t] * a[:, 0]) * h + dt[..., t] * bs[:, 0, t, None] * u[..., t]
        out[..., t] = h
    return out


@pytest.mark.parametrize("c,length,strong", [(32, 3136, False), (48, 3136, True), (4, 1, False),
                                              (4, 7, True), (4, 8, False), (4, 9, True), (4, 31, False),
                                              (4, 32, True), (4, 33, False), (4, 64, False), (4, 65, True),
                                              (2, 513, False), (3, 1025, False), (2, 1100, True)])
def test_chunked_equals_sequential(c: int, length: int, strong: bool) -> None:
    args = scan_inputs(2 if length < 3000 else 1, c, length, strong)
    ref = selective_scan_reference(*args)
    out = selective_scan_chunked(*args)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert rel_err(out, ref) <= 1e-5


def test_slow_decay_over_long_sequences_keeps_precision() -> None:
    # dt tiny, A = -1: states accumulate over the whole sequence (where cumsum differences would cancel)
    u, delta, a, bs, bias = scan_inputs(1, 8, 3136, seed=4)
    args = (u, delta, a, bs, torch.full_like(bias, -9.0))
    assert rel_err(selective_scan_chunked(*args), selective_scan_reference(*args)) <= 1e-5


def test_reference_is_the_recurrence() -> None:
    u, delta, a, bs, bias = (t.double() for t in scan_inputs(1, 2, 5, seed=1))
    dt = torch.nn.functional.softplus(delta + bias[:, None])
    h = torch.zeros(1, 2, dtype=torch.float64)
    for t in range(5):
        h = torch.exp(dt[..., t] * a[:, 0]) * h + dt[..., t] * bs[:, 0, t, None] * u[..., t]
    assert torch.allclose(selective_scan_reference(u, delta, a, bs, bias)[..., -1].double(), h, rtol=1e-6)


def test_custom_op_fake_kernel_and_schema() -> None:
    args = scan_inputs(2, 4, 40)
    torch.library.opcheck(torch.ops.edgevit.selective_scan.default, args,
                          test_utils=("test_schema", "test_faketensor"))
    # against an fp64 loop written here, not the chunked function that is the op's own kernel
    assert rel_err(torch.ops.edgevit.selective_scan(*args), _sequential_fp64(*args)) <= 1e-5


def test_flop_formula_counts_seven_macs_per_element() -> None:
    args = scan_inputs(2, 6, 50)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        selective_scan(*args)
    flops = counter.get_flop_counts()["Global"]
    assert {str(k): v for k, v in flops.items()} == {"edgevit.selective_scan": 2 * 7 * 2 * 6 * 50}


def test_dispatch_uses_differentiable_form_under_autograd() -> None:
    u, delta, a, bs, bias = scan_inputs(1, 3, 70)
    delta.requires_grad_(True)
    out = selective_scan(u, delta, a, bs, bias)
    out.sum().backward()
    assert delta.grad is not None and torch.isfinite(delta.grad).all()
    with use_scan_custom_op(), torch.no_grad():
        assert torch.equal(selective_scan(u, delta, a, bs, bias), out.detach())


def test_elementwise_softplus_equals_softplus_at_every_magnitude() -> None:
    # every element to a few ulps of fp64 softplus, tiny results (z << 0, where log(1 + e) rounds to 0) included
    z = torch.cat((torch.linspace(-100.0, 100.0, 20001), torch.tensor([-88.0, -30.0, -17.0, -1e-6, 0.0, 1e-6, 19.9,
                                                                       20.0, 20.1, 1e4])))
    out = softplus_elementwise(z)
    ref = torch.nn.functional.softplus(z.double())
    assert out.dtype == torch.float32
    subnormal_step = 2.0 ** -149  # below exp(-87) fp32 has only absolute resolution
    assert bool(((out.double() - ref).abs() <= 4e-7 * ref + subnormal_step).all())


def test_elementwise_softplus_is_traced_only_where_asked() -> None:
    class Discretize(torch.nn.Module):
        def forward(self, u, delta, a, bs, bias):
            return discretize(u, delta, a, bs, bias)

    def traced_ops() -> set[str]:
        graph = torch.export.export(Discretize(), args).graph
        return {str(node.target) for node in graph.nodes if node.op == "call_function"}

    args = scan_inputs(1, 4, 8)
    assert any("softplus" in op for op in traced_ops())  # ExecuTorch's export keeps the softplus node
    with use_elementwise_softplus():
        ops = traced_ops()
        exported = torch.export.export(Discretize(), args).module()(*args)
    assert not any("softplus" in op for op in ops) and any("log" in op for op in ops)
    assert any("softplus" in op for op in traced_ops())  # off again after the block
    for x, e in zip(exported, Discretize()(*args)):
        assert rel_err(x, e) <= 1e-6
