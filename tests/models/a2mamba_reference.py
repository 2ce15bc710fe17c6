"""A2Mamba written the direct way, for tests only.

Everything here is deliberately independent of ``edgevit.models.a2mamba``: the configurations and the
state_dict layout are transcribed from ``shared/specs/a2mamba.md`` (§1, §2), neighborhood attention is a
per-pixel loop using NATTEN 0.17's own ``get_window_start``/``get_pb_start`` formulas, the scan is the
sequential recurrence, tensors use the official layouts (``b (m n c) h w -> m b n h w c`` etc.), and the
forward is a function of a plain official-layout state_dict.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from edgevit.models.ops.selective_scan import selective_scan_reference


@dataclass(frozen=True)
class Config:
    dims: tuple[int, ...]
    depths: tuple[int, ...]
    heads: tuple[int, ...]
    mlp_ratios: tuple[float, ...]
    scale: tuple[str | None, ...]  # per stage: None, "layerscale" or "resscale"
    kernels: tuple[int, ...] = (11, 9, 7, 7)


CONFIGS = {  # spec §1
    "n": Config((32, 64, 128, 192), (2, 2, 8, 2), (2, 2, 4, 8), (4, 4, 3, 3), (None,) * 4),
    "t": Config((48, 96, 256, 448), (2, 2, 10, 2), (2, 4, 8, 16), (4, 4, 3, 3), (None,) * 4),
    "s": Config((64, 128, 320, 512), (2, 4, 12, 4), (2, 4, 10, 16), (4, 4, 3, 3),
                (None, None, "resscale", "resscale")),
    "b": Config((96, 192, 384, 512), (4, 6, 12, 6), (4, 8, 12, 16), (4, 4, 3.75, 3.75), ("layerscale",) * 4),
    "l": Config((96, 192, 448, 672), (4, 6, 18, 6), (4, 8, 16, 24), (4, 4, 4, 4), ("layerscale",) * 4),
}


# ----------------------------------------------------------------------------- official state_dict layout


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def official_layout(cfg: Config, num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """Every official state_dict key with its shape (spec §2)."""
    c0 = cfg.dims[0]
    out: dict[str, tuple[int, ...]] = {"patch_embed.0.weight": (c0 // 2, 3, 3, 3)}
    out |= _bn("patch_embed.1", c0 // 2)
    out["patch_embed.3.weight"] = (c0 // 2, c0 // 2, 3, 3)
    out |= _bn("patch_embed.4", c0 // 2)
    out["patch_embed.6.weight"] = (c0, c0 // 2, 3, 3)
    out |= _bn("patch_embed.7", c0)
    out["patch_embed.9.weight"] = (c0, c0, 3, 3)
    out |= _bn("patch_embed.10", c0)
    for s, c in enumerate(cfg.dims):
        n, k, hd = cfg.heads[s], cfg.kernels[s], c // cfg.heads[s]
        f, r = int(cfg.mlp_ratios[s] * c), math.ceil(c / 16)
        stage = f"layers.{2 * s}"
        out[f"{stage}.rope.angle"] = (hd // 2,)
        for j in range(cfg.depths[s]):
            p = f"{stage}.blocks.{j}"
            out |= {f"{p}.cpe1.weight": (c, 1, 3, 3), f"{p}.cpe1.bias": (c,),
                    f"{p}.norm1.weight": (c,), f"{p}.norm1.bias": (c,)}
            t = f"{p}.token_mixer"
            out |= {f"{t}.qkv.weight": (3 * c, c, 1, 1), f"{t}.qkv.bias": (3 * c,),
                    f"{t}.gate.0.weight": (c, c, 1, 1), f"{t}.gate.0.bias": (c,)}
            out |= _bn(f"{t}.gate.1", c)
            out |= {f"{t}.lepe.weight": (c, 1, 5, 5), f"{t}.lepe.bias": (c,),
                    f"{t}.norm.weight": (c,), f"{t}.norm.bias": (c,),
                    f"{t}.proj.0.weight": (c,), f"{t}.proj.0.bias": (c,),
                    f"{t}.proj.1.weight": (c, c, 1, 1), f"{t}.proj.1.bias": (c,)}
            if s < 3:
                out |= {f"{t}.ssm.x_proj_weight": (r + 2, c), f"{t}.ssm.dt_projs_weight": (c, r),
                        f"{t}.ssm.dt_projs_bias": (c,), f"{t}.ssm.A_logs": (c, 1), f"{t}.ssm.Ds": (c,),
                        f"{t}.ssm.conv2d.weight": (c, 1, 5, 5), f"{t}.ssm.conv2d.bias": (c,),
                        f"{t}.ssm.state_fusion.weight": (n, n, 1, 1), f"{t}.ssm.state_fusion.bias": (n,)}
            out[f"{t}.rpb.0"] = out[f"{t}.rpb.1"] = (n // 2, 2 * k - 1, 2 * k - 1)
            if s == 3:
                out[f"{t}.rpb.2"] = (1, n, 49, 49)
            out |= {f"{p}.cpe2.weight": (c, 1, 3, 3), f"{p}.cpe2.bias": (c,),
                    f"{p}.norm2.weight": (c,), f"{p}.norm2.bias": (c,),
                    f"{p}.mlp.fc1.weight": (f, c, 1, 1), f"{p}.mlp.fc1.bias": (f,),
                    f"{p}.mlp.dwconv.weight": (f, 1, 3, 3), f"{p}.mlp.dwconv.bias": (f,),
                    f"{p}.mlp.fc2.weight": (c, f, 1, 1), f"{p}.mlp.fc2.bias": (c,)}
            if cfg.scale[s] is not None:
                out |= {f"{p}.layer_scale1.weight": (c, 1, 1, 1), f"{p}.layer_scale1.bias": (c,),
                        f"{p}.layer_scale2.weight": (c, 1, 1, 1), f"{p}.layer_scale2.bias": (c,)}
        if s < 3:
            out[f"layers.{2 * s + 1}.0.weight"] = (cfg.dims[s + 1], c, 3, 3)
            out |= _bn(f"layers.{2 * s + 1}.1", cfg.dims[s + 1])
    out |= {"classifier.0.weight": (1024, cfg.dims[-1], 1, 1), "classifier.0.bias": (1024,)}
    out |= _bn("classifier.1", 1024)
    if num_classes:
        out |= {"classifier.4.weight": (num_classes, 1024, 1, 1), "classifier.4.bias": (num_classes,)}
    return out


def random_state_dict(cfg: Config, seed: int = 0) -> dict[str, Tensor]:
    """An official-layout state_dict with every tensor randomised (rpb, A_logs, Ds, dt biases, BN stats,
    layer scales, RoPE angles too) at magnitudes that keep a 20+-block network numerically tame."""
    g = torch.Generator().manual_seed(seed)
    layout = official_layout(cfg)
    norms = {k.rsplit(".", 1)[0] for k in layout if k.endswith("running_mean")}  # BatchNorms
    norms |= {k.rsplit(".", 1)[0] for k in layout if re.search(r"\.(norm1|norm2|norm|proj\.0)\.weight$", k)}
    sd: dict[str, Tensor] = {}
    for key, shape in layout.items():
        owner, leaf = key.rsplit(".", 1)
        if leaf == "num_batches_tracked":
            sd[key] = torch.tensor(0)
        elif key.endswith(".rpb.1"):
            sd[key] = sd[key[:-1] + "0"]  # one shared parameter in the official model
        elif owner in norms:
            if leaf == "running_var":
                sd[key] = torch.rand(shape, generator=g) * 0.5 + 0.75
            else:
                sd[key] = (1.0 if leaf == "weight" else 0.0) + torch.randn(shape, generator=g) * 0.1
        elif leaf == "angle":
            sd[key] = (torch.rand(shape[0] // 2, generator=g) * 0.9 + 0.05).repeat_interleave(2)
        elif leaf == "A_logs":
            sd[key] = torch.randn(shape, generator=g) * 0.7
        elif ".rpb." in key:
            sd[key] = torch.randn(shape, generator=g)
        elif owner.endswith(("layer_scale1", "layer_scale2")) and leaf == "weight":
            sd[key] = 0.5 + torch.rand(shape, generator=g) * 0.5
        elif len(shape) >= 2:
            sd[key] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        else:
            sd[key] = torch.randn(shape, generator=g) * 0.2  # biases, Ds, dt biases
    return sd


# ------------------------------------------------------------------ neighborhood attention, brute force


def _natten_window_start(index: int, length: int, k: int, nb: int, d: int) -> int:
    if d <= 1:
        return max(index - nb, 0) + (index + nb >= length) * (length - index - nb - 1)
    ni = index - nb * d
    if ni < 0:
        return index % d
    if index + nb * d >= length:
        imodd = index % d
        a = (length // d) * d
        b = length - a
        if imodd < b:
            return length - b + imodd - 2 * nb * d
        return a + imodd - k * d
    return ni


def _natten_pb_start(index: int, length: int, k: int, nb: int, d: int) -> int:
    if d <= 1:
        return nb + (index < nb) * (nb - index) + (index + nb >= length) * (length - index - 1 - nb)
    if index - nb * d < 0:
        return k - 1 - (index // d)
    if index + nb * d >= length:
        return (length - index - 1) // d
    return nb


def neighbors(index: int, length: int, k: int, d: int) -> tuple[list[int], list[int]]:
    """Key coordinates and bias rows of one query along one axis: NATTEN's formulas when its residue
    class has >= k members, else every class member (edgevit's small-map extension, spec §3.4)."""
    d = max(d, 1)
    members = list(range(index % d, length, d))
    if len(members) >= k:
        start = _natten_window_start(index, length, k, k // 2, d)
        pb = _natten_pb_start(index, length, k, k // 2, d)
        return [start + d * s for s in range(k)], [pb + s for s in range(k)]
    return members, [(k - 1) + (p - index) // d for p in members]


def na_qk_reference(q: Tensor, k: Tensor, kernel: int, dil: tuple[int, int], rpb: Tensor | None) -> Tensor:
    """q, k (B, n, H, W, D) -> logits (B, n, H, W, K*K); empty slots -inf."""
    b, n, h, w, _ = q.shape
    out = torch.full((b, n, h, w, kernel, kernel), float("-inf"), dtype=q.dtype)
    for i in range(h):
        rows, brows = neighbors(i, h, kernel, dil[0])
        for j in range(w):
            cols, bcols = neighbors(j, w, kernel, dil[1])
            keys = k[:, :, rows][:, :, :, cols]  # (B, n, kr, kc, D)
            logit = torch.einsum("bnd,bnrcd->bnrc", q[:, :, i, j], keys)
            if rpb is not None:
                logit = logit + rpb[:, brows][:, :, bcols]
            out[:, :, i, j, :len(rows), :len(cols)] = logit
    return out.flatten(-2)


def na_av_reference(attn: Tensor, v: Tensor, kernel: int, dil: tuple[int, int]) -> Tensor:
    """attn (B, n, H, W, K*K), v (B, n, H, W, D) -> (B, n, H, W, D)."""
    b, n, h, w, dim = v.shape
    a = attn.unflatten(-1, (kernel, kernel))
    out = torch.zeros_like(v)
    for i in range(h):
        rows, _ = neighbors(i, h, kernel, dil[0])
        for j in range(w):
            cols, _ = neighbors(j, w, kernel, dil[1])
            vals = v[:, :, rows][:, :, :, cols]
            out[:, :, i, j] = torch.einsum("bnrc,bnrcd->bnd", a[:, :, i, j, :len(rows), :len(cols)], vals)
    return out


# ----------------------------------------------------------------------------------------------- forward


def _bn_apply(sd: dict[str, Tensor], p: str, x: Tensor) -> Tensor:
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],
                        sd[f"{p}.bias"], False, 0.0, 1e-5)


def _ln2d(sd: dict[str, Tensor], p: str, x: Tensor) -> Tensor:
    x = x.permute(0, 2, 3, 1)
    x = F.layer_norm(x, x.shape[-1:], sd[f"{p}.weight"], sd[f"{p}.bias"], 1e-6)
    return x.permute(0, 3, 1, 2)


def _conv(sd: dict[str, Tensor], p: str, x: Tensor, stride: int = 1, groups: int = 1) -> Tensor:
    w = sd[f"{p}.weight"]
    return F.conv2d(x, w, sd.get(f"{p}.bias"), stride, w.shape[-1] // 2, 1, groups)


def _dw(sd: dict[str, Tensor], p: str, x: Tensor) -> Tensor:
    return _conv(sd, p, x, groups=x.shape[1])


def _rope(angle: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
    ih, iw = torch.arange(h).to(angle), torch.arange(w).to(angle)
    sin = torch.cat([torch.sin(ih[:, None] * angle)[:, None].repeat(1, w, 1),
                     torch.sin(iw[:, None] * angle)[None].repeat(h, 1, 1)], -1)
    cos = torch.cat([torch.cos(ih[:, None] * angle)[:, None].repeat(1, w, 1),
                     torch.cos(iw[:, None] * angle)[None].repeat(h, 1, 1)], -1)
    return sin, cos


def _theta_shift(x: Tensor, sin: Tensor, cos: Tensor) -> Tensor:
    x1, x2 = x[..., ::2], x[..., 1::2]
    return x * cos + torch.stack([-x2, x1], dim=-1).flatten(-2) * sin


def _ssm(sd: dict[str, Tensor], p: str, x: Tensor, attn1: Tensor, attn2: Tensor, kernel: int,
         dil: tuple[int, int]) -> Tensor:
    b, c, h, w = x.shape
    x = F.silu(_dw(sd, f"{p}.conv2d", x))
    xs = x.reshape(b, c, h * w)
    r = sd[f"{p}.dt_projs_weight"].shape[1]
    x_dbl = torch.matmul(sd[f"{p}.x_proj_weight"][None], xs)
    dts, bs, cs = x_dbl[:, :r], x_dbl[:, r:r + 1], x_dbl[:, r + 1:r + 2]
    dts = torch.matmul(sd[f"{p}.dt_projs_weight"][None], dts)
    state = selective_scan_reference(xs, dts, -torch.exp(sd[f"{p}.A_logs"]), bs, sd[f"{p}.dt_projs_bias"])
    nh = attn1.shape[1]
    # "b (m n d) (h w) -> m b n h w d"
    st = state.reshape(b, 2, nh, c // (2 * nh), h, w).permute(1, 0, 2, 4, 5, 3)
    s1 = na_av_reference(attn1, st[0], kernel, (1, 1))
    s2 = na_av_reference(attn2, st[1], kernel, dil)
    st = torch.cat([s1, s2], 1)  # b n h w d -> b n d (h w)
    st = st.permute(0, 1, 4, 2, 3).reshape(b, 2 * nh, c // (2 * nh), h * w)
    st = F.conv2d(st, sd[f"{p}.state_fusion.weight"], sd[f"{p}.state_fusion.bias"]).flatten(1, 2)
    out = st * cs + xs * sd[f"{p}.Ds"].view(-1, 1)
    return out.reshape(b, c, h, w)


def _mixer(sd: dict[str, Tensor], p: str, x: Tensor, n: int, kernel: int, global_mode: bool,
           sin: Tensor, cos: Tensor) -> Tensor:
    b, c, h, w = x.shape
    dil = (min(int(h / kernel), kernel), min(int(w / kernel), kernel))
    gate = F.silu(_bn_apply(sd, f"{p}.gate.1", _conv(sd, f"{p}.gate.0", x)))
    qkv = _conv(sd, f"{p}.qkv", x)
    lepe = _dw(sd, f"{p}.lepe", qkv[:, -c:])
    q, k, v = qkv.reshape(b, 3, n, c // n, h, w).permute(1, 0, 2, 4, 5, 3)  # m b n h w c
    q = _theta_shift(q, sin, cos) * (c // n) ** -0.5
    k = _theta_shift(k, sin, cos)
    rpb = sd[f"{p}.rpb.0"]
    half = n // 2
    attn1 = torch.softmax(na_qk_reference(q[:, :half], k[:, :half], kernel, (1, 1), rpb), -1)
    v1 = na_av_reference(attn1, v[:, :half], kernel, (1, 1))
    attn2 = torch.softmax(na_qk_reference(q[:, half:], k[:, half:], kernel, dil, sd[f"{p}.rpb.1"]), -1)
    v2 = na_av_reference(attn2, v1 + v[:, half:], kernel, dil)
    y = torch.cat([v1, v2], 1).permute(0, 1, 4, 2, 3).reshape(b, c, h, w)  # b n h w c -> b (n c) h w
    if not global_mode:
        y = _ssm(sd, f"{p}.ssm", y, attn1, attn2, kernel, dil)
    else:
        ql, kl = q.reshape(b, n, h * w, c // n), k.reshape(b, n, h * w, c // n)
        vl = y.reshape(b, n, c // n, h * w).transpose(-1, -2)
        attn = torch.einsum("bnlc,bnmc->bnlm", ql, kl)
        bias = sd[f"{p}.rpb.2"]
        if bias.shape[2:] != attn.shape[2:]:
            bias = F.interpolate(bias, size=attn.shape[2:], mode="bicubic", align_corners=False)
        attn = torch.softmax(attn + bias, -1)
        y = torch.einsum("bnlm,bnmc->bncl", attn, vl).reshape(b, -1, h, w)
    y = (_ln2d(sd, f"{p}.norm", y) + lepe) * gate
    return _conv(sd, f"{p}.proj.1", _ln2d(sd, f"{p}.proj.0", y))


def _block(sd: dict[str, Tensor], p: str, x: Tensor, cfg: Config, s: int, sin: Tensor, cos: Tensor) -> Tensor:
    def ls(name: str, t: Tensor) -> Tensor:
        return t * sd[f"{p}.{name}.weight"].view(1, -1, 1, 1) + sd[f"{p}.{name}.bias"].view(1, -1, 1, 1)

    def mixer(t: Tensor) -> Tensor:
        return _mixer(sd, f"{p}.token_mixer", _ln2d(sd, f"{p}.norm1", t), cfg.heads[s], cfg.kernels[s],
                      s == 3, sin, cos)

    def mlp(t: Tensor) -> Tensor:
        t = F.gelu(_conv(sd, f"{p}.mlp.fc1", _ln2d(sd, f"{p}.norm2", t)))
        return _conv(sd, f"{p}.mlp.fc2", t + _dw(sd, f"{p}.mlp.dwconv", t))

    mode = cfg.scale[s]
    x = x + _dw(sd, f"{p}.cpe1", x)
    if mode == "resscale":
        x = ls("layer_scale1", x) + mixer(x)
    elif mode == "layerscale":
        x = x + ls("layer_scale1", mixer(x))
    else:
        x = x + mixer(x)
    x = x + _dw(sd, f"{p}.cpe2", x)
    if mode == "resscale":
        return ls("layer_scale2", x) + mlp(x)
    if mode == "layerscale":
        return x + ls("layer_scale2", mlp(x))
    return x + mlp(x)


@torch.no_grad()
def reference_forward(sd: dict[str, Tensor], x: Tensor, cfg: Config) -> tuple[Tensor, list[Tensor]]:
    """Logits and the four stage outputs of the official model described by ``sd``."""
    for i, act in ((0, True), (3, True), (6, True), (9, False)):
        x = _conv(sd, f"patch_embed.{i}", x, stride=2 if i in (0, 6) else 1)
        x = _bn_apply(sd, f"patch_embed.{i + 1}", x)
        x = F.gelu(x) if act else x
    feats = []
    for s in range(4):
        sin, cos = _rope(sd[f"layers.{2 * s}.rope.angle"], x.shape[2], x.shape[3])
        for j in range(cfg.depths[s]):
            x = _block(sd, f"layers.{2 * s}.blocks.{j}", x, cfg, s, sin, cos)
        feats.append(x)
        if s < 3:
            x = _bn_apply(sd, f"layers.{2 * s + 1}.1", _conv(sd, f"layers.{2 * s + 1}.0", x, stride=2))
    x = F.silu(_bn_apply(sd, "classifier.1", _conv(sd, "classifier.0", x)))
    x = F.adaptive_avg_pool2d(x, 1)
    return _conv(sd, "classifier.4", x).flatten(1), feats


def rel_err(a: Tensor, ref: Tensor) -> float:
    return float((a.double() - ref.double()).abs().max() / ref.double().abs().max())
