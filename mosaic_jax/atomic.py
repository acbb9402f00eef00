"""Atomic outputs: write into a temporary sibling, rename over the target on success.

Every writer in the project (models, forecasts, stats, stores, metrics, plots) goes through
``atomic_path`` so that an interrupted run never leaves a half-written file or folder
under the final name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` (file or folder, as the caller writes it).

    When the block succeeds the temporary replaces ``path`` (an existing folder is removed
    first); when it raises, the temporary is deleted and ``path`` is untouched.
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then rename it into place."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path).absolute()
