import torch
from torch import nn

from edgevit.models.counting import count_macs, count_params


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(self.conv(x))
        t = y.flatten(2)  # (B, 8, HW)
        y = (t @ t.transpose(1, 2)).mean(-1)  # (B, 8): a batched matmul
        return self.fc(y)


def test_macs_by_kind_match_hand_count() -> None:
    h, w = 6, 10
    macs = count_macs(Tiny(), (h, w), batch=3)  # per image, whatever the batch
    assert macs.by_kind["conv"] == h * w * 8 * 3 * 9 + h * w * 8 * 9
    assert macs.by_kind["matmul"] == 8 * 8 * h * w
    assert macs.by_kind["linear"] == 8 * 5
    assert macs.conv_linear == macs.by_kind["conv"] + macs.by_kind["linear"]
    assert macs.for_convention("all") == macs.total == macs.conv_linear + macs.by_kind["matmul"]


def test_params_count_shared_tensors_once() -> None:
    m = Tiny()
    m.extra = m.fc  # shared module
    assert count_params(m) == (3 * 8 * 9 + 8) + (8 * 9 + 8) + (8 * 5 + 5)


def test_counting_restores_training_mode() -> None:
    m = Tiny().train()
    count_macs(m, (4, 4))
    assert m.training
