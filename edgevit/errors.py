"""User-facing errors.

Everything a user can get wrong (a model name, a path, a shape, a checkpoint) raises a subclass of
:class:`EdgevitError`. The CLI prints such errors as a single line and exits non-zero; anything else is
a bug in edgevit and keeps its traceback.
"""

from __future__ import annotations


class EdgevitError(Exception):
    """An error caused by user input; its message names the problem and the fix."""


class UnknownModelError(EdgevitError, KeyError):
    """The model name is not in the registry."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class InputShapeError(EdgevitError, ValueError):
    """An input size or tensor shape the model or artifact cannot take."""


class CheckpointError(EdgevitError):
    """A checkpoint that cannot be read or does not fit the model."""


class ArtifactError(EdgevitError):
    """An exported artifact that is missing, unreadable or of an unknown kind."""


class VerificationError(EdgevitError):
    """An artifact whose outputs differ from PyTorch beyond tolerance."""


class BackendUnavailableError(EdgevitError):
    """A runtime backend whose Python package or hardware is not present."""
