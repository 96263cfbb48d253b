"""Atomic file writes (a file is either the old one or the complete new one, never half of either), and reading
back the fingerprinted ``.npz`` checkpoints of resumable jobs."""

from __future__ import annotations

import os
import pathlib
from typing import Callable, IO

import numpy as np


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


def load_checkpoint(path: str | os.PathLike, fingerprint: str, caller: str, differs: str) -> dict | None:
  """The arrays of the ``.npz`` checkpoint at ``path`` (None if there is no file), after checking that it was
  written by the same job: its ``fingerprint`` entry must equal ``fingerprint``.

  Raises:
    ValueError: naming ``caller`` and what may differ (``differs``) when the checkpoint belongs to another job.
  """
  try:
    f = np.load(path)
  except FileNotFoundError:
    return None
  with f:
    if str(f["fingerprint"]) != fingerprint:
      raise ValueError(f"{caller}: the checkpoint {os.fspath(path)!r} belongs to another job ({differs}); delete it "
                       "or pass another path.")
    return {k: f[k] for k in f.files}
