"""Atomic file writes: a reader, or a kill at any moment, sees the old file or the new one, never part of one.

The new content goes to a hidden temporary file beside the target (a rename is atomic only within one file
system), which `os.replace` then puts in its place. No fsync: this guards against interruption, not power loss.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def temp_path(path: str | os.PathLike, unique: bool = False) -> Path:
    """Where `path` is written before the rename: `.<name>.tmp`, so a killed write leaves one known name that the
    next write reuses; `unique` adds the process id, for a file that several processes may write at once."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp" if unique else f".{path.name}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, unique: bool = False) -> Iterator[Path]:
    """Yield a temporary path for a writer that wants a path or handle of its own (torch.save, PIL, np.savez); it
    replaces `path` when the block ends without an exception, and is removed when one is raised."""
    path = Path(path)
    tmp = temp_path(path, unique)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:  # a KeyboardInterrupt too: leave no temporary file behind
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, data: str | bytes, unique: bool = False) -> None:
    """Write `data` (text, or bytes as they are) to `path` atomically."""
    with atomic_path(path, unique) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
