from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import edgevit
from edgevit.errors import CheckpointError

NAME = "s2aformer-mini"


def trained_like_state(seed: int = 7) -> dict[str, torch.Tensor]:
    return edgevit.create_model(NAME, seed=seed).state_dict()


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model", "ema"])
def test_pth_checkpoints_load_plain_or_wrapped(tmp_path: Path, wrapper: str | None) -> None:
    sd = trained_like_state()
    obj = sd if wrapper is None else {wrapper: sd, "epoch": 300}
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    model = edgevit.create_model(NAME, weights=str(path))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())


def test_safetensors_and_dataparallel_prefix(tmp_path: Path) -> None:
    sd = trained_like_state()
    path = tmp_path / "ckpt.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in sd.items()}, str(path))
    model = edgevit.create_model(NAME, weights=str(path))
    assert torch.equal(model.state_dict()["head.fc.weight"], sd["head.fc.weight"])


def test_mismatch_lists_missing_unexpected_and_shapes(tmp_path: Path) -> None:
    sd = trained_like_state()
    del sd["stem.0.conv.weight"]
    sd["extra.weight"] = torch.zeros(1)
    sd["head.fc.bias"] = torch.zeros(10)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as err:
        edgevit.create_model(NAME, weights=str(path))
    msg = str(err.value)
    assert "\n" not in msg
    assert "missing keys: stem.0.conv.weight" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "head.fc.bias (10,)!=(1000,)" in msg


def test_features_only_ignores_classifier_keys(tmp_path: Path) -> None:
    path = tmp_path / "cls.pth"
    torch.save({"model": trained_like_state()}, path)
    model = edgevit.create_model(NAME, weights=str(path), features_only=True)
    assert len(model(torch.randn(1, 3, 64, 64))) == 4


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        edgevit.create_model(NAME, weights=str(junk))
    with pytest.raises(CheckpointError, match="does not exist"):
        edgevit.create_model(NAME, weights=str(tmp_path / "nope.pth"))
    no_sd = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "args": {"lr": 1.0}}, no_sd)
    with pytest.raises(CheckpointError, match="holds no state dict"):
        edgevit.create_model(NAME, weights=str(no_sd))
