"""How much PartialFormer's token selection amplifies small weight noise (docs/models/partialformer.md, "INT8 at
small inputs").

Every weight matrix (Linear and Conv weights) is multiplied by ``1 + eps * N(0, 1)`` (independent per entry,
seed 0), and the perturbed model's logits and foreground masks are compared with the unperturbed model's on
the first ``images`` evaluation images. Prints, per (size, eps), the mean number of tokens that changed side in
each block and the agreement report the int8 gate would give.

    PYTHONPATH=$PWD python scripts/selection_sensitivity.py [--model partialformer-b0] [--images 32]
"""

from __future__ import annotations

import argparse
import copy

import torch

from edgevit.images import to_tensor
from edgevit.models import partialformer
from edgevit.models.registry import create_model
from edgevit.quantization.accuracy import compare_logits, evaluation_images


def run(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and the foreground mask of every block, in call order."""
    masks: list[torch.Tensor] = []
    select = partialformer.select_foreground

    def recording(score: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx, mask = select(score, k)
        masks.append(mask)
        return idx, mask

    partialformer.select_foreground = recording
    try:
        with torch.no_grad():
            return model(x), masks
    finally:
        partialformer.select_foreground = select


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="partialformer-b0")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--sizes", default="128,224")
    parser.add_argument("--eps", default="1e-4,1e-3,1e-2")
    args = parser.parse_args()
    model = create_model(args.model).eval()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for size in (int(s) for s in args.sizes.split(",")):
        x = torch.from_numpy(to_tensor(evaluation_images(args.images, (size, size)), mean, std))
        ref, ref_masks = run(model, x)
        for eps in (float(e) for e in args.eps.split(",")):
            torch.manual_seed(0)
            noisy = copy.deepcopy(model)
            with torch.no_grad():
                for p in noisy.parameters():
                    if p.dim() >= 2:
                        p.mul_(1 + eps * torch.randn_like(p))
            out, masks = run(noisy, x)
            moved = [round((a != b).sum(1).float().mean().item() / 2, 1) for a, b in zip(ref_masks, masks)]
            report = compare_logits(ref.numpy(), out.numpy(), threshold=0.95)
            print(f"{size}x{size} eps={eps:g}: tokens changing side per block {moved}; {report.summary()}")


if __name__ == "__main__":
    main()
