"""Atomic file writes: a file is either the old one or the complete new one, never half of either."""

from __future__ import annotations

import os
import pathlib
from typing import Callable, IO


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
  """Writes ``path`` through ``write(f)`` into a temporary file beside it, then renames it into place.

  A failure (an exception in ``write``, a full disk, a kill) leaves the previous file untouched and no temporary
  file behind (except after a kill, when a ``.<name>.<pid>.tmp`` may remain).
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    with open(tmp, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()
