"""Files: atomic writes (a file is either the old one or the complete new one, never half of either), JSON results,
and the one checkpoint format of every resumable job (a fingerprinted ``.npz`` of a pytree)."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Any, Callable, IO

import jax
import numpy as np

_FORMAT = "jaxsnn-checkpoint-v2"


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
  """Writes ``path`` through ``write(f)`` into a temporary file beside it, then renames it into place.

  A failure (an exception in ``write``, a full disk, a kill) leaves the previous file untouched and no temporary
  file behind (except after a kill, when a ``.<name>.<pid>.tmp`` may remain).

  Args:
    path: the file (its directory is created if needed).
    write: ``write(f)`` writes the content to the binary file object ``f``.
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


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
  """Writes ``obj`` as JSON atomically (see :func:`atomic_write`): a killed run never leaves half a results file.

  Args:
    path: the file.
    obj: anything ``json.dumps`` takes.
    indent: as in ``json.dumps``.
  """
  text = json.dumps(obj, indent=indent)
  atomic_write(path, lambda f: f.write(text.encode()))


def fingerprint(*parts: Any, arrays: Any = ()) -> str:
  """A digest of ``repr(parts)`` and the bytes of every leaf of ``arrays``: what a resumed job must share with the
  run that wrote its checkpoint."""
  h = hashlib.sha256(repr(parts).encode())
  for leaf in jax.tree_util.tree_leaves(arrays):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def _encode(tree, arrays: dict):
  """The JSON skeleton of ``tree``; its arrays go into ``arrays`` under ``"leaf:<n>"``."""
  if isinstance(tree, dict):
    if not all(isinstance(k, str) for k in tree):
      raise TypeError(f"checkpoint: dict keys must be strings; got {sorted(map(repr, tree))}")
    return {"dict": {k: _encode(v, arrays) for k, v in tree.items()}}
  if isinstance(tree, (list, tuple)):
    return {"list": [_encode(v, arrays) for v in tree]}
  if tree is None or isinstance(tree, (bool, str)):
    return {"value": tree}
  if isinstance(tree, (int, float)) and not isinstance(tree, bool):
    return {"value": tree}
  key = f"leaf:{len(arrays)}"
  arrays[key] = np.asarray(tree)
  return {"array": key}


def _decode(skeleton, arrays):
  if "dict" in skeleton:
    return {k: _decode(v, arrays) for k, v in skeleton["dict"].items()}
  if "list" in skeleton:
    return [_decode(v, arrays) for v in skeleton["list"]]
  if "value" in skeleton:
    return skeleton["value"]
  return np.asarray(arrays[skeleton["array"]])


def save_checkpoint(path: str | os.PathLike, fingerprint_: str, tree: Any) -> None:
  """Writes ``tree`` (nested dicts with string keys, lists, tuples, numbers, strings, None and arrays) atomically
  to the ``.npz`` at ``path``, with the job's fingerprint. Tuples come back as lists."""
  arrays: dict = {}
  skeleton = _encode(tree, arrays)
  arrays["__format__"] = np.asarray(_FORMAT)
  arrays["__fingerprint__"] = np.asarray(fingerprint_)
  arrays["__tree__"] = np.asarray(json.dumps(skeleton))
  atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path: str | os.PathLike, fingerprint_: str, caller: str, differs: str) -> Any | None:
  """The tree saved by :func:`save_checkpoint` at ``path`` (None if there is no file), after checking that it was
  written by the same job.

  Raises:
    ValueError: naming ``caller`` and what may differ (``differs``) when the checkpoint belongs to another job or is
      not a jaxsnn checkpoint.
  """
  try:
    f = np.load(path)
  except FileNotFoundError:
    return None
  with f:
    if "__format__" not in f.files or str(f["__format__"]) != _FORMAT:
      raise ValueError(f"{caller}: {os.fspath(path)!r} is not a jaxsnn checkpoint ({_FORMAT}); delete it or pass "
                       "another path.")
    if str(f["__fingerprint__"]) != fingerprint_:
      raise ValueError(f"{caller}: the checkpoint {os.fspath(path)!r} belongs to another job ({differs}); delete it "
                       "or pass another path.")
    return _decode(json.loads(str(f["__tree__"])), f)
