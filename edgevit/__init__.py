"""edgevit: deploy efficient vision backbones to every runtime."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgevit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"

from .errors import EdgevitError
from .models import count_macs, count_params, create_model, get_model_card, list_models

__all__ = ["EdgevitError", "__version__", "count_macs", "count_params", "create_model", "get_model_card",
           "list_models"]
