"""Loading local checkpoints into registry models.

Accepts ``.pth``/``.pt`` (read with ``weights_only=True``: a checkpoint never runs code) and
``.safetensors``; the state dict may be plain or wrapped under ``state_dict``/``model``/``ema`` keys,
and DataParallel ``module.`` prefixes are stripped. Any mismatch is reported key by key, and NaN weights
are refused (infinite values are not: masks legitimately hold -inf). A pickle that would run code is
refused in edgevit's own words: torch's message suggests ``weights_only=False``, which runs that code.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import CheckpointError

WRAPPER_KEYS = ("state_dict_ema", "model_ema", "ema", "state_dict", "model", "module")
_MAX_LISTED = 8


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a checkpoint file and unwrap it to a flat ``{name: tensor}`` dict."""
    p = Path(path)
    if p.is_dir():
        raise CheckpointError(f"checkpoint {str(p)!r} is a directory; pass the path of the .pth/.pt/.safetensors "
                              "file inside it")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist; pass the path of a .pth/.pt/.safetensors file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(p), device="cpu")
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():  # no Python object asked for: the bytes are not a checkpoint
            raise CheckpointError(f"cannot read checkpoint {str(p)!r} as a .pth/.pt/.safetensors file: it is "
                                  "corrupted or not a checkpoint") from None
        raise CheckpointError(_code_running_pickle(p, exc)) from None
    except Exception as exc:  # any parse failure is a bad file, not a bug
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {str(p)!r} as a .pth/.pt/.safetensors file: {first}") from exc
    return unwrap_state_dict(obj, str(p))


def _code_running_pickle(path: Path, exc: Exception) -> str:
    """edgevit's own line for a pickle that would run code: torch's message advises ``weights_only=False``,
    i.e. running the file's code, which edgevit never does and never suggests."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    what = f" (it references {found.group(1)})" if found else ""
    return (f"checkpoint {str(path)!r} contains Python objects other than tensors{what}; edgevit only reads "
            "plain tensor checkpoints and never runs code from a file. Save the model's state_dict (torch.save(model."
            "state_dict(), ...)) or a .safetensors file and pass that")


def unwrap_state_dict(obj: object, origin: str = "checkpoint") -> dict[str, Tensor]:
    while isinstance(obj, dict) and not _is_tensor_dict(obj):
        inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], dict)), None)
        if inner is None:
            raise CheckpointError(
                f"{origin} holds no state dict (top-level keys: {', '.join(map(str, list(obj)[:_MAX_LISTED]))}); "
                f"expected tensors, or one of {', '.join(WRAPPER_KEYS)}"
            )
        obj = inner
    if not isinstance(obj, dict):
        raise CheckpointError(f"{origin} holds a {type(obj).__name__}, not a state dict")
    sd = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _is_tensor_dict(d: dict) -> bool:
    return bool(d) and all(isinstance(v, Tensor) for v in d.values())


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load ``path`` into ``model`` strictly; raise one line naming every kind of mismatch.

    Classifier keys are dropped when the model was built ``features_only`` (a classification checkpoint
    is the usual source of detection backbones).
    """
    sd = read_state_dict(path)
    if getattr(model, "features_only", False):
        prefixes = tuple(getattr(model, "classifier_prefixes", ()))
        sd = {k: v for k, v in sd.items() if not k.startswith(prefixes)}
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong_shape = [
        f"{k} {tuple(sd[k].shape)}!={tuple(own[k].shape)}" for k in own if k in sd and sd[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if wrong_shape:
        problems.append(f"shape mismatches: {_listing(wrong_shape)}")
    if problems:
        name = getattr(getattr(model, "card", None), "name", type(model).__name__)
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit {name}: " + "; ".join(problems))
    nan = [k for k, v in sd.items() if v.is_floating_point() and bool(torch.isnan(v).any())]
    if nan:
        raise CheckpointError(f"checkpoint {str(path)!r} holds NaN values in {_listing(nan)}; the weights are "
                              "broken (a diverged training run or a bad conversion): use another checkpoint")
    model.load_state_dict(sd, strict=True)
