"""Model zoo: one module per family; importing this package registers every variant."""

from . import s2aformer  # noqa: F401  (registers the family)
from . import mat  # noqa: F401  (registers the family)
from . import a2mamba  # noqa: F401  (registers the family)
from . import dualformer  # noqa: F401  (registers the family)
from . import partialformer  # noqa: F401  (registers the family)
from . import emsnet  # noqa: F401  (registers the family)
from .checkpoint import load_checkpoint, read_state_dict
from .counting import MacCount, count_macs, count_params
from .init import is_generated_weights, reference_init, weights_label
from .registry import ModelCard, ReportedFigures, create_model, get_model_card, list_models, resolve_name

__all__ = [
    "MacCount", "ModelCard", "ReportedFigures", "count_macs", "count_params", "create_model",
    "get_model_card", "is_generated_weights", "list_models", "load_checkpoint", "read_state_dict",
    "reference_init", "resolve_name", "weights_label",
]
