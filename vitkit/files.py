"""Writing files so that a crash (kill -9, power cut, full disk) never leaves half a file in place of a
good one: every checkpoint, export, download, shard and index goes through `atomic_write`."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

from .errors import VitkitError


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[str]:
    """Yield a temporary name beside `path`; when the block ends, flush it to disk and rename it over
    `path`. On any error the temporary goes and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise VitkitError(f"could not write {path}: {e.strerror or e}; the previous file is intact") from None
        raise


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Run `write(tmp_path)`, flush it to disk, then rename over `path`; on any error `path` is untouched."""
    with atomic_path(path) as tmp:
        write(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def fsync_dir(directory: Path) -> None:
    """Make a rename durable (a power cut after it must not bring the old file back)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(directory: Path) -> int:
    """Delete the temporary files of writes that a crash cut short."""
    stale = list(directory.glob(".*.tmp")) if directory.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def cache_dir() -> Path:
    """Where vitkit keeps what it can rebuild (the bf16 probe, OpenVINO conversions of checkpoints):
    ~/.cache/vitkit, or $XDG_CACHE_HOME/vitkit. Deleting it only costs the time to rebuild."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vitkit"
