"""Atomic writes: a file either appears complete or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bnn_export.errors import BnnExportError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike[str]) -> None:
    """Fail early (before any long work) if ``path`` cannot be written."""
    _check_parent(Path(path))


def _check_parent(path: Path) -> None:
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise BnnExportError(
            f"cannot create output directory {str(parent)!r}: it is a file",
            hint="choose a writable output path",
        )
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BnnExportError(
                f"cannot create output directory {str(parent)!r}: {exc.strerror}",
                hint="choose a writable output path",
            ) from None
    if not os.access(parent, os.W_OK):
        raise BnnExportError(
            f"output directory {str(parent)!r} is not writable",
            hint="choose a writable output path",
        )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On any exception (including KeyboardInterrupt) the temporary file is removed and
    ``path`` is left untouched.
    """
    target = Path(path)
    _check_parent(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BnnExportError(
            f"could not write {str(target)!r}: {exc.strerror or exc}",
            hint="check free disk space and permissions of the output path",
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a directory in a temporary sibling and move it into place on success.

    An existing directory at ``path`` is replaced only after the new one is complete.
    """
    target = Path(path)
    _check_parent(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BnnExportError(
            f"could not write {str(target)!r}: {exc.strerror or exc}",
            hint="check free disk space and permissions of the output path",
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_files(directory: str | os.PathLike[str], files: dict[str, bytes]) -> None:
    """Write several files into ``directory`` all or nothing.

    Every file is first written to a temporary sibling; only when all are complete are
    they renamed into place. On failure no new file is left behind, and a directory
    this call created is removed again. Other files in ``directory`` are never touched.
    """
    target = Path(directory)
    created = not target.exists()
    _check_parent(target / "x")
    temps: dict[Path, Path] = {}
    try:
        for name, data in files.items():
            fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=target)
            os.close(fd)
            temps[Path(tmp_name)] = target / name
            Path(tmp_name).write_bytes(data)
            os.chmod(tmp_name, 0o666 & ~_umask())
        for tmp, final in temps.items():
            os.replace(tmp, final)
    except BaseException as exc:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        if created:
            shutil.rmtree(target, ignore_errors=True)
        if isinstance(exc, OSError):
            raise BnnExportError(
                f"could not write into {str(target)!r}: {exc.strerror or exc}",
                hint="check free disk space and permissions of the output path",
            ) from None
        raise
