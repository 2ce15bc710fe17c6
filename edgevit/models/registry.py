"""Model registry and model cards.

Every family module registers its variants here with :func:`register_model`. Names are normalised
(case-insensitive, ``_`` accepted for ``-``) so ``S2AFormer_T`` and ``s2aformer-t`` are the same model.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import EdgevitError, UnknownModelError


class ModelOptionError(EdgevitError, ValueError):
    """A ``--option`` the model family does not declare, or a value it does not allow."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ReportedFigures:
    """What the source paper reports for one variant (no value is ours).

    ``macs_convention`` says what the paper's MAC counter included, so tests compare like with like:
    ``"conv+linear"`` (thop-style, only convolutions and linear layers) or ``"all"``
    (every matmul, attention and custom op included).
    """

    params_m: float | None = None
    gmacs: float | None = None
    top1: float | None = None
    input_size: int = 224
    macs_convention: str = "conv+linear"
    # throughput figures in images/s keyed by a label such as "gpu_h100", "cpu_xeon_6426y", "onnx"
    throughput: dict[str, float] = field(default_factory=dict)
    source: str = ""


@dataclass(frozen=True)
class ModelOption:
    """A constructor option a family lets users set (``edgevit export MODEL --option name=value``).

    ``kind`` is ``"int"``, ``"bool"``, ``"str"`` or ``"ints"`` (a tuple of ``length`` ints, one per stage);
    ``choices`` lists the allowed strings; ``minimum`` bounds ints. Declared on the card so a bad value is
    refused, with what is allowed, before the model is built.
    """

    name: str
    kind: str
    help: str
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    length: int | None = None

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed, or None."""
        if self.kind == "bool":
            return None if isinstance(value, bool) else "takes True or False"
        if self.kind == "str":
            if not isinstance(value, str):
                return f"takes one of {', '.join(self.choices)}"
            return None if not self.choices or value in self.choices else f"takes one of {', '.join(self.choices)}"
        values = value if self.kind == "ints" else (value,)
        if self.kind == "ints" and not (isinstance(value, (tuple, list)) and len(value) == self.length):
            return f"takes {self.length} integers, e.g. {self.name}=({', '.join(['4'] * (self.length or 1))})"
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return "takes integers"
        if self.minimum is not None and min(values) < self.minimum:
            return f"takes integers of at least {self.minimum}"
        return None

    def describe(self) -> str:
        allowed = ("|".join(self.choices) if self.choices else
                   f"{self.length} ints" if self.kind == "ints" else self.kind)
        return f"{self.name} ({allowed})"


NUM_CLASSES = ModelOption("num_classes", "int", "classifier outputs (a checkpoint's head must match)", minimum=1)


@dataclass(frozen=True)
class ModelCard:
    """Everything a deployer needs to know about a variant before building it."""

    name: str
    family: str
    variant: str
    paper: str
    paper_url: str
    architecture: str  # "official" (matches released code) or "reconstruction" (from the paper + spec)
    input_size: tuple[int, int] = (224, 224)
    input_multiple: int = 32  # input height/width must be a multiple of this
    min_input_size: int = 32
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_classes: int = 1000
    reported: ReportedFigures = field(default_factory=ReportedFigures)
    notes: str = ""
    options: tuple[ModelOption, ...] = (NUM_CLASSES,)  # constructor options users may set
    # Flat-colour frames (normalised per-channel values) verification adds for an input size, measured with
    # the reference weights (seed 0) so that a path seeded noise barely exercises decides the output there:
    # PartialFormer's tie rule at every block's foreground boundary (scripts/find_tie_frames.py), A2Mamba's
    # last inter-chunk scan carry. ((height, width), (colour, ...)) pairs.
    verification_colours: tuple[tuple[tuple[int, int], tuple[tuple[float, float, float], ...]], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def colours_for(self, input_size: tuple[int, int]) -> tuple[tuple[float, float, float], ...]:
        """The verification colours measured for ``input_size`` (none for other sizes)."""
        return next((c for size, c in self.verification_colours if tuple(size) == tuple(input_size)), ())

    def check_options(self, options: dict[str, Any]) -> None:
        """Refuse an option the family does not declare, or a value it does not allow, naming what it takes."""
        declared = {o.name: o for o in self.options}
        takes = ", ".join(o.describe() for o in self.options)
        for key, value in options.items():
            if key not in declared:
                raise ModelOptionError(f"{self.name} does not take model option {key!r}; it takes {takes}")
            problem = declared[key].problem(value)
            if problem:
                raise ModelOptionError(f"model option {key}={value!r} of {self.name}: {key} {problem}")


@dataclass(frozen=True)
class RegistryEntry:
    card: ModelCard
    builder: Callable[..., nn.Module]


_REGISTRY: dict[str, RegistryEntry] = {}


def normalize_name(name: str) -> str:
    """Canonical registry key: lower case, ``_`` and spaces turned into ``-``."""
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def register_model(card: ModelCard, builder: Callable[..., nn.Module]) -> None:
    """Add a variant; ``builder(**overrides)`` must return the model with random weights."""
    key = normalize_name(card.name)
    if key != card.name:
        raise ValueError(f"model card name {card.name!r} is not in canonical form {key!r}")
    if key in _REGISTRY:
        raise ValueError(f"model {key!r} is registered twice")
    _REGISTRY[key] = RegistryEntry(card, builder)


def list_models(family: str | None = None) -> list[str]:
    """Registered model names in registration order, optionally of one family."""
    fam = family.lower() if family else None
    return [k for k, e in _REGISTRY.items() if fam is None or e.card.family.lower() == fam]


def resolve_name(name: str) -> str:
    """Return the canonical name or raise :class:`UnknownModelError` with close matches."""
    key = normalize_name(name)
    if key in _REGISTRY:
        return key
    close = difflib.get_close_matches(key, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "run `edgevit list` to see all models."
    raise UnknownModelError(f"unknown model {name!r}; {hint}")


def get_model_card(name: str) -> ModelCard:
    return _REGISTRY[resolve_name(name)].card


def create_model(
    name: str,
    weights: str | None = None,
    *,
    features_only: bool = False,
    seed: int = 0,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model in eval mode.

    Without ``weights`` the model gets the reference weights of :mod:`edgevit.models.init` for ``seed``
    (every path carries signal, so verification can see a wrong graph), rebuilt identically later
    (``edgevit verify`` relies on this). ``weights`` loads a local checkpoint instead; ``features_only`` returns the four stage feature maps (strides 4/8/16/32) instead of
    logits and drops the classifier.
    """
    entry = _REGISTRY[resolve_name(name)]
    entry.card.check_options(overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = entry.builder(features_only=features_only, **overrides)
    model.card = entry.card  # type: ignore[assignment]
    from .init import weights_label

    if weights is not None:
        from .checkpoint import load_checkpoint

        load_checkpoint(model, weights)
    else:
        from .init import reference_init

        reference_init(model, seed)
    # what the model's outputs depend on besides its input, for runners and verification to report
    model.weights_label = weights_label(weights, seed)  # type: ignore[assignment]
    return model.eval()
