"""What every edgevit artifact is and how it reaches the disk.

* :class:`ArtifactMetadata`: the metadata every artifact carries, shared by exporters (which write it)
  and runtimes (which read it), so an artifact can be verified and benchmarked without being told what it is.
* The output-path policy (:func:`claim_output`), one for every format, files and folders alike: edgevit
  never deletes or overwrites what it did not write. An existing path is replaced only when it holds a
  previous edgevit artifact of the same kind (recognised by its edgevit metadata: ``edgevit.*`` properties
  inside an ONNX file, ``manifest.json`` inside an IR folder, the ``.json`` manifest beside an engine) *and*
  ``--force`` is given; everything else is refused before any work. A single-file format given an existing
  folder (or a path ending in ``/``) writes its default file name inside that folder, keeping its contents.
* Atomic placement (:func:`atomic_output`): an artifact is built under a temporary name beside its final
  name and renamed into place when complete, so the final name never holds a partial artifact and a
  previous artifact survives any failure (disk full, verification failure, Ctrl-C, SIGKILL). Temporaries
  are named ``.<name>.edgevit-tmp-<pid>-<token>`` (scratch folders ``edgevit-scratch-<pid>-*`` in the
  system temp folder): the next run removes those whose process is gone or that are older than a day.
* Artifacts get the usual permissions (``0666``/``0777`` minus the umask), like any file a tool writes.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from .errors import ArtifactError, ArtifactWriteError, EdgevitError, OutputPathError

PREFIX = "edgevit."


@dataclass(frozen=True)
class ArtifactMetadata:
    model: str
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    batch: int | None  # None: dynamic batch axis
    input_names: tuple[str, ...] = ("input",)
    output_names: tuple[str, ...] = ("logits",)
    features_only: bool = False
    weights: str = "reference(seed=0)"
    seed: int = 0
    edgevit_version: str = ""
    source_digest: str = ""  # edgevit's source that exported it (cache.source_digest); "" in older artifacts
    extra: dict[str, str] = field(default_factory=dict)

    def to_props(self) -> dict[str, str]:
        """Flat string properties (ONNX metadata_props, OpenVINO rt_info, JSON manifests)."""
        out = {}
        for k, v in asdict(self).items():
            if k == "extra":
                out.update({PREFIX + ek: str(ev) for ek, ev in v.items()})
            else:
                out[PREFIX + k] = json.dumps(v)
        return out

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "the artifact") -> ArtifactMetadata | None:
        """Parse properties written by :meth:`to_props`; ``None`` when the artifact is not edgevit's.

        A property that is not the JSON edgevit wrote (a corrupted or hand-edited file) raises
        :class:`ArtifactError` naming ``source`` and the property.
        """
        if PREFIX + "model" not in props:
            return None
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs: dict[str, object] = {}
        extra: dict[str, str] = {}
        for key, raw in props.items():
            if not key.startswith(PREFIX):
                continue
            name = key[len(PREFIX):]
            if name in known:
                try:
                    kwargs[name] = json.loads(raw)
                except (TypeError, ValueError):
                    raise _corrupted(source, key, f"is not valid JSON ({str(raw)[:40]!r})") from None
            else:
                extra[name] = str(raw)
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        for name in required:
            if name not in kwargs:
                raise _corrupted(source, PREFIX + name, "is missing")
        for name, check, expected in _FIELD_CHECKS:
            if name in kwargs and not check(kwargs[name]):
                raise _corrupted(source, PREFIX + name, f"should be {expected}, not {kwargs[name]!r:.60}")
        for name in ("input_size", "mean", "std", "input_names", "output_names"):
            if name in kwargs:
                kwargs[name] = tuple(kwargs[name])  # type: ignore[arg-type]
        return cls(**kwargs, extra=extra)  # type: ignore[arg-type]


def _corrupted(source: str, key: str, problem: str) -> ArtifactError:
    return ArtifactError(f"{source}: edgevit metadata {key!r} {problem}; the file is corrupted or was edited, "
                         "re-export it with `edgevit export`")


def _is_list_of(kind: type | tuple[type, ...], n: int | None = None) -> Callable[[object], bool]:
    return lambda v: (isinstance(v, list) and (n is None or len(v) == n)
                      and all(isinstance(x, kind) and not isinstance(x, bool) for x in v))


_FIELD_CHECKS: tuple[tuple[str, Callable[[object], bool], str], ...] = (
    ("model", lambda v: isinstance(v, str) and bool(v), "a model name"),
    ("input_size", _is_list_of(int, 2), "[height, width]"),
    ("mean", _is_list_of((int, float)), "a list of numbers"),
    ("std", _is_list_of((int, float)), "a list of numbers"),
    ("batch", lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v > 0),
     "a positive integer or null"),
    ("input_names", _is_list_of(str), "a list of names"),
    ("output_names", _is_list_of(str), "a list of names"),
    ("features_only", lambda v: isinstance(v, bool), "true or false"),
    ("weights", lambda v: isinstance(v, str), "a string"),
    ("seed", lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    ("edgevit_version", lambda v: isinstance(v, str), "a string"),
    ("source_digest", lambda v: isinstance(v, str), "a string"),
)


# ---------------------------------------------------------------------------------------------------------
# Output-path policy


@dataclass(frozen=True)
class OutputKind:
    """How one format's artifact sits on disk, so one policy covers files and folders alike.

    ``foreign(path)`` returns ``None`` when ``path`` holds a previous edgevit artifact of this kind, else a
    few words saying why not (``"is not an edgevit ONNX file"``). ``companions(path)`` are the files written
    beside a single-file artifact (an engine's manifest); they follow the same policy.
    """

    label: str  # "ONNX file", "OpenVINO IR folder"
    folder: bool
    foreign: Callable[[Path], str | None]
    companions: Callable[[Path], tuple[Path, ...]] = lambda path: ()


MANIFEST_FILE = "manifest.json"  # what a folder artifact says about itself (edgevit's own folders carry one)


class JsonManifest:
    """A dataclass kept as a JSON file beside a single-file artifact (engine, .pte): one writer and one reader,
    whose failure is a one-line error telling how to rebuild the artifact (``REBUILD``)."""

    REBUILD = "edgevit export"

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))  # type: ignore[call-overload]

    @classmethod
    def read(cls, path: Path):  # returns an instance of cls
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise ArtifactError(f"cannot read manifest {str(path)!r} ({exc}); rebuild the artifact with "
                                f"`{cls.REBUILD}`") from exc


def read_manifest(path: Path) -> dict[str, object] | None:
    """A folder artifact's ``manifest.json`` (``None`` when absent); a corrupted one is one line naming the
    file and the field, not a JSON traceback."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ArtifactError(f"{str(path)!r} is not valid JSON ({exc}); the manifest is corrupted, re-export the "
                            "artifact with `edgevit export`") from None
    for key in ("metadata", "files"):
        if not isinstance(data, dict) or not isinstance(data.get(key, {}), dict):
            raise ArtifactError(f"{str(path)!r}: field {key!r} should be a JSON object; the manifest is corrupted, "
                                "re-export the artifact with `edgevit export`")
    data.setdefault("metadata", {})
    data.setdefault("files", {})
    return data


def output_kind(title: str, folder: bool, read_metadata: Callable[[Path], ArtifactMetadata | None],
                companions: Callable[[Path], Sequence[Path]] = lambda path: ()) -> OutputKind:
    """The policy's view of a format: a path holds a previous artifact of it when the format's own metadata
    reader finds edgevit metadata there (ONNX metadata_props, an IR's manifest.json, an engine's manifest)
    and, for a folder, nothing but the manifest and the files it lists (a user's file added inside keeps
    the folder from being replaced)."""

    def foreign(path: Path) -> str | None:
        if folder != path.is_dir():
            return "is a file, not a folder" if folder else "is a folder, not a file"
        try:
            meta = read_metadata(path)
        except Exception:  # noqa: BLE001 - unreadable or corrupted: not recognisably edgevit's
            meta = None
        if meta is None:
            return f"is not an edgevit {title} (no edgevit metadata)"
        if folder:
            manifest = read_manifest(path / MANIFEST_FILE) or {"files": {}}
            allowed = {MANIFEST_FILE, *map(str, manifest["files"].values())}  # type: ignore[union-attr]
            others = sorted(p.name for p in path.iterdir() if p.name not in allowed)
            if others:
                return f"holds files edgevit did not write ({', '.join(others[:3])}{', …' if len(others) > 3 else ''})"
        return None

    return OutputKind(title, folder, foreign, lambda path: tuple(companions(path)))


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and not path.is_symlink() and path != path.parent:
        path = path.parent
    return path


def _unwritable(directory: Path) -> str | None:
    """Why files cannot be created in ``directory`` (checked up front), or ``None``."""
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return "it is on a read-only file system"
    except OSError:
        pass
    if not os.access(directory, os.W_OK | os.X_OK):
        return "permission denied"
    return None


def claim_output(path: str | Path, kind: OutputKind, *, force: bool = False,
                 default_name: str | None = None) -> Path:
    """Check, before any work, that an artifact of ``kind`` may be written at ``path``; return the final path.

    Refuses (:class:`OutputPathError`, exit 2) a path that exists and is not a previous edgevit artifact of
    this kind, a previous artifact without ``force``, and a path that cannot be created (a file where a
    folder is expected, a read-only or unwritable folder). For a single-file ``kind``, an existing folder
    (or a path ending in ``/``) receives ``default_name`` inside it.
    """
    raw = str(path)
    path = Path(path)
    if not kind.folder and default_name and (path.is_dir() or raw.endswith(("/", os.sep))):
        path = path / default_name
    if kind.folder and path.suffix.lower() in (".onnx", ".xml", ".engine", ".json") and not path.exists():
        raise OutputPathError(f"an {kind.label} is a folder; pass a folder name as --output, e.g. "
                              f"{path.with_suffix('')}")
    anchor = _nearest_existing(path.parent)
    if not anchor.is_dir():
        raise OutputPathError(f"cannot create {path}: {anchor} is a file, not a folder; choose another --output")
    why = _unwritable(anchor)
    if why:
        raise OutputPathError(f"cannot write {path}: {why} ({anchor}); choose another --output")
    sweep_temporaries(path.parent)  # what killed runs left here goes before anything new is written
    for target in (path, *kind.companions(path)):
        if not (target.exists() or target.is_symlink()):
            continue
        shown = target if target.name else target.resolve()  # "." -> the folder's real name
        problem = kind.foreign(path) if target == path else None
        if target != path and not path.exists():
            problem = "is not part of an edgevit artifact"
        if problem:
            raise OutputPathError(f"{shown} already exists and {problem}; edgevit never replaces what it did not "
                                  "write: choose another --output or move it away")
        if not force:
            raise OutputPathError(f"{shown} holds a previous edgevit {kind.label}; pass --force to replace it, "
                                  "or choose another --output")
    return path


# ---------------------------------------------------------------------------------------------------------
# Temporaries and atomic placement

TEMP_MAX_AGE_S = 24 * 3600
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.edgevit-(?P<role>tmp|old)-(?P<pid>\d+)-[0-9a-f]+(\.[^.]*)?$")
_SCRATCH_PREFIX = "edgevit-scratch-"
_SCRATCH_RE = re.compile(r"^edgevit-scratch-(?P<pid>\d+)-")
# errnos that mean "the machine cannot take this write", not "edgevit has a bug"
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM})
_LOW_SPACE_BYTES = 16 << 20


def temporary_name(final: Path, role: str = "tmp") -> Path:
    """``.<name>.edgevit-<role>-<pid>-<token><suffix>`` beside ``final``: hidden, ours, and its process known."""
    return final.parent / f".{final.name}.edgevit-{role}-{os.getpid()}-{secrets.token_hex(4)}{final.suffix}"


def _process_gone(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists but belongs to someone else
        return False
    return False


def _stale(path: Path, pid: int, max_age_s: float) -> bool:
    try:
        age = time.time() - path.lstat().st_mtime
    except OSError:
        return False
    return _process_gone(pid) or age > max_age_s


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def sweep_temporaries(directory: str | Path, max_age_s: float = TEMP_MAX_AGE_S) -> list[Path]:
    """Remove edgevit temporaries in ``directory`` left by runs that were killed (their pid is gone) or are
    older than ``max_age_s``; a previous artifact moved aside by a killed run whose replacement never landed
    is moved back. Returns what was removed or restored."""
    directory = Path(directory)
    swept: list[Path] = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return swept
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if not m or not _stale(entry, int(m["pid"]), max_age_s):
            continue
        final = directory / m["name"]
        try:
            if m["role"] == "old" and not (final.exists() or final.is_symlink()):
                os.replace(entry, final)
            else:
                _remove(entry)
            swept.append(entry)
        except OSError:
            continue  # another run is sweeping too, or the folder is not ours to clean
    return swept


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A private folder in the system temp folder for intermediate files (an ONNX file on its way to an IR),
    named with the pid so the next run sweeps it if this one is killed."""
    base = Path(tempfile.gettempdir())
    for entry in base.glob(_SCRATCH_PREFIX + "*"):
        m = _SCRATCH_RE.match(entry.name)
        if m and _stale(entry, int(m["pid"]), TEMP_MAX_AGE_S):
            _remove(entry)
    path = Path(tempfile.mkdtemp(prefix=f"{_SCRATCH_PREFIX}{os.getpid()}-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _make_parents(directory: Path) -> list[Path]:
    """Create ``directory`` and missing parents; return the ones created (removed again on failure)."""
    created = []
    for d in reversed([directory, *directory.parents]):
        if not d.exists():
            d.mkdir()
            created.append(d)
    return created


def write_failure(exc: BaseException, directory: Path, tmp: Path | None = None) -> str | None:
    """Why a write into ``directory`` failed when the cause is the machine (full disk, read-only file
    system, permissions, ``ulimit -f``), in a few words; ``None`` when nothing points at the machine.
    Writers in C++ (OpenVINO) only say ``basic_ios::clear``, so the folder is examined too."""
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
        if exc.errno == errno.EFBIG:
            return "file too large (the file size limit, ulimit -f, was reached)"
        return exc.strerror or str(exc)
    try:
        st = os.statvfs(directory)
        if st.f_flag & os.ST_RDONLY:
            return "read-only file system"
        if st.f_bavail * st.f_frsize < _LOW_SPACE_BYTES:
            return f"no space left on device ({st.f_bavail * st.f_frsize >> 20} MB free)"
    except OSError:
        pass
    if not os.access(directory, os.W_OK | os.X_OK):
        return "permission denied"
    import resource

    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and tmp is not None:
        sizes = [p.stat().st_size for p in ([tmp] if tmp.is_file() else tmp.rglob("*")) if p.is_file()]
        if sizes and max(sizes) >= limit - (1 << 20):
            return f"file too large (the file size limit, ulimit -f, of {limit} bytes was reached)"
    return None


@contextmanager
def atomic_output(final: str | Path, *, folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``final`` (a folder, created, when ``folder``); move it into place only
    if the block succeeds.

    The caller claims ``final`` first (:func:`claim_output`). A failure, a failed verification or Ctrl-C
    leaves no trace (no temporary, no folder this call created) and any previous artifact untouched; a
    write failure caused by the machine becomes one :class:`ArtifactWriteError` line naming path and cause.
    A folder replacing a previous one is swapped in with two renames; a run killed between them leaves the
    previous artifact under an ``-old-`` temporary that the next run moves back.
    """
    final = Path(final)
    created = _make_parents(final.parent)
    sweep_temporaries(final.parent)
    tmp = temporary_name(final)
    placed = False
    try:
        if folder:
            tmp.mkdir()  # mode 0777 minus the umask, unlike mkdtemp's 0700
        yield tmp
        if not folder and tmp.exists():
            tmp.chmod(0o666 & ~_umask())  # writers that go through mkstemp would leave 0600
        _place(tmp, final)
        placed = True
    except (EdgevitError, KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        cause = write_failure(exc, final.parent, tmp)
        if cause is None:
            raise
        kept = "the previous artifact there is kept" if final.exists() else "nothing was written"
        raise ArtifactWriteError(f"cannot write {final}: {cause}; {kept}") from exc
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)
        if not placed:
            for d in reversed(created):
                try:
                    d.rmdir()
                except OSError:
                    break


def _place(tmp: Path, final: Path) -> None:
    if not (tmp.is_dir() and final.is_dir()):
        os.replace(tmp, final)
        return
    old = temporary_name(final, "old")
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old, final)
        raise
    _remove(old)


def atomic_output_dir(final: str | Path) -> Iterator[Path]:
    """:func:`atomic_output` for an artifact made of several files (an OpenVINO IR folder)."""
    return atomic_output(final, folder=True)  # type: ignore[return-value]

