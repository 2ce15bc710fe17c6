"""Find flat-colour frames on which PartialFormer's tie rule decides a foreground slot in every block.

Usage: PYTHONPATH=$PWD python scripts/find_tie_frames.py partialformer-b0 224x224 [--pool 1024]

Verification runs grey frames (``verify.UNIFORM_LEVELS``); their ties sit only in blocks whose maps still
have an interior untouched by the zero padding. This draws random per-channel colours (normalised values
in [-2, 2]), keeps those whose near-boundary scores all sit at least ``--min-distance`` grid steps from a
grid line (so fp32 rounding cannot move them on another CPU), and greedily picks the fewest that, with the
first grey level (what a batch-1 verification runs), tie at every block's boundary. Prints the tuple for
the model card's ``verification_colours``; measured with the reference weights of ``verify.COLOUR_SEED``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from edgevit.models import create_model
from edgevit.verify import COLOUR_SEED, flat_frames, uniform_inputs
from tests.models.partialformer_reference import boundary_tie_report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("size", help="HxW, e.g. 224x224")
    parser.add_argument("--pool", type=int, default=1024)
    parser.add_argument("--min-distance", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    torch.set_num_threads(1)
    model = create_model(args.model, seed=COLOUR_SEED)
    grey = torch.from_numpy(uniform_inputs(1, size))
    base_tie, base_dist = boundary_tie_report(model, grey)
    if (base_dist < args.min_distance).any():
        print(f"warning: the first grey frame has a score {base_dist.min():.4f} steps from a grid line")
    left = set(np.flatnonzero(~base_tie[:, 0].numpy()))
    colours = np.random.default_rng(args.seed).uniform(-2, 2, (args.pool, 3)).round(3).astype(np.float32)
    ties, dists = [], []
    for i in range(0, len(colours), 32):
        t, d = boundary_tie_report(model, torch.from_numpy(flat_frames(colours[i:i + 32], size)))
        ties.append(t), dists.append(d)
    tie, dist = torch.cat(ties, 1).numpy(), torch.cat(dists, 1).numpy()
    safe = (dist >= args.min_distance).all(0)
    usable = tie & safe[None, :]
    print(f"{args.model} {args.size}: grey ties blocks {sorted(set(range(len(tie))) - left)}; "
          f"{safe.sum()} of {len(colours)} colours safe; ties per block {usable.sum(1).tolist()}")
    chosen = []
    while left:
        best = max(np.flatnonzero(safe), key=lambda c: len(left & set(np.flatnonzero(usable[:, c]))))
        gain = left & set(np.flatnonzero(usable[:, best]))
        if not gain:
            break
        chosen.append(best)
        left -= gain
        print(f"  colour {tuple(colours[best].tolist())}: blocks {sorted(int(b) for b in gain)}, "
              f"nearest grid line {dist[:, best].min():.3f} steps")
    if left:
        print(f"  no safe colour ties in blocks {sorted(int(b) for b in left)}: raise --pool")
    literal = ", ".join(str(tuple(round(float(v), 3) for v in colours[c])) for c in chosen)
    print(f"(({size[0]}, {size[1]}), ({literal},)),")


if __name__ == "__main__":
    main()
