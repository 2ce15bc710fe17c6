"""User-facing errors and the exit codes of the ``edgevit`` command.

The error model (the CLI's ``main`` applies it; scripts can rely on it):

* ``0``: success.
* ``1``: the work ran and its result failed a check: an artifact differs from PyTorch beyond tolerance
  (:class:`VerificationError`), a benchmark row failed (:class:`BenchmarkFailedError`).
* ``2``: a user error: anything a user can get wrong (a model name, a path, a shape, a checkpoint, an
  option value, a full disk) raises a subclass of :class:`EdgevitError` whose message names the problem
  and the fix; the CLI prints it as one line.
* ``3`` (:data:`EXIT_BUG`): any other exception is a bug in edgevit; the CLI prints one line saying so and
  how to see the traceback (``edgevit --debug ...``).
* ``130``: interrupted (Ctrl-C); nothing half-written is left behind.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_BUG = 3
EXIT_INTERRUPTED = 130


class EdgevitError(Exception):
    """An error caused by user input; its message names the problem and the fix."""

    exit_code = EXIT_USER_ERROR


class UnknownModelError(EdgevitError, KeyError):
    """The model name is not in the registry."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class InputShapeError(EdgevitError, ValueError):
    """An input size or tensor shape the model or artifact cannot take."""


class InputTypeError(EdgevitError, TypeError):
    """An input array whose dtype the model would only take through a lossy cast (wrong results)."""


class CheckpointError(EdgevitError):
    """A checkpoint that cannot be read or does not fit the model."""


class ArtifactError(EdgevitError):
    """An exported artifact that is missing, unreadable, corrupted or of an unknown kind."""


class OutputPathError(EdgevitError):
    """An output path edgevit refuses to write: it holds something edgevit did not write, a previous
    artifact without ``--force``, or it cannot be created. Raised before any work is done."""


class ArtifactWriteError(EdgevitError):
    """Writing an artifact failed for a reason outside edgevit (disk full, read-only file system, file
    size limit); the previous artifact at that path, if any, is kept."""


class ResourceLimitError(EdgevitError):
    """A request that would need more memory (or another resource) than the machine has."""


class VerificationError(EdgevitError):
    """An artifact whose outputs differ from PyTorch beyond tolerance (or whose reference is not finite)."""

    exit_code = EXIT_CHECK_FAILED


class BenchmarkFailedError(EdgevitError):
    """A benchmark whose rows (some or all) failed; the finished rows are still reported and saved."""

    exit_code = EXIT_CHECK_FAILED


class BackendUnavailableError(EdgevitError):
    """A runtime backend whose Python package or hardware is not present."""


def exit_code_for(exc: BaseException) -> int:
    """The process exit code for an exception reaching the top of the CLI."""
    if isinstance(exc, EdgevitError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_BUG
