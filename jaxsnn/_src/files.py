"""Files: atomic writes, JSON results, and the one file format of every artifact jaxsnn writes.

**Atomic writes** (:func:`atomic_write`): a file is either the old one or the complete new one, never half of either.

**The jaxsnn file format** (:func:`write` / :func:`read`), version :data:`VERSION`: a converted network
(:func:`jaxsnn.save`), calibration statistics, thresholds, a trained ANN's variables and the checkpoint of every
resumable job (training's too) are all one kind of file: a zip archive (stored, not compressed) of

* ``jaxsnn.json``: the header: ``format`` (``"jaxsnn"``), ``version``, ``kind`` (``"network"``, ``"stats"``,
  ``"thresholds"``, ``"checkpoint"``, ``"variables"``), ``writer`` (the jaxsnn, JAX and NumPy versions that wrote
  it), ``content`` (a JSON skeleton of the saved tree, whose arrays are references into the table), ``arrays`` (one
  row per array: its path in the tree, dtype, shape and digest) and ``fingerprint`` (a digest of all of the above);
* ``arrays/<n>.npy``: the arrays, one ``.npy`` each (dtypes NumPy does not know, such as bfloat16, stored as unsigned
  integers of the same width; the header says the real one).

So ``numpy.load(path)`` opens any of them for a look, and nothing in a file is ever executed: no pickle (reading a
pickle runs whatever code it names), only JSON and ``.npy`` arrays read with ``allow_pickle=False``. A file is
checked when read: a file that is not a jaxsnn file, a truncated or corrupted one, one of another format version, one
of another kind, and one whose header or arrays were altered after writing (each array against its digest) are
:class:`FormatError`\\ s that say which of these it is and name what differs.

The saved tree may hold dicts with string keys, lists, tuples, None, bools, ints, floats, strings, arrays (NumPy or
JAX) and NumPy scalars, and pytree nodes of other classes (an Equinox module, a NamedTuple): those come back as
:class:`Node`, which keeps their children, their order and their key paths but needs no class (a file never needs the
code that wrote it).

Why not Orbax: jaxsnn's artifacts are small, host-local trees (a network's variables and per-neuron arrays, running
maxima, histograms, an optimiser's state) that one process writes as one file; Orbax's strengths (sharded arrays
written by many hosts in parallel, asynchronous saves, a directory per checkpoint) solve problems jaxsnn does not
have, and it would not hold the network's program. In a multi-host job each process checkpoints its own share to its
own file (``experiments/batch.py``: ``progress_<process>``), so one file per process is the whole story.

Files written before version 1 (the flax msgpack variables of the committed reference networks, read by
:func:`jaxsnn.training.load_variables`; the ``.npz`` formats ``jaxsnn-checkpoint-v2``, ``jaxsnn-stats-v1`` and
``jaxsnn-stats-v1-thresholds``) are still read by the functions that wrote them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import time
import zipfile
from typing import Any, Callable, IO

import jax
import numpy as np

FORMAT = "jaxsnn"
VERSION = 1
HEADER = "jaxsnn.json"
SUFFIX = ".jaxsnn"  # the suffix the docs use; any name works

# What each kind of file holds, and what reads it (for the message when a file of one kind is read as another).
KINDS = {
    "network": ("a converted network", "jaxsnn.load"),
    "stats": ("calibration statistics", "jaxsnn.load_stats"),
    "thresholds": ("thresholds", "jaxsnn.load_thresholds"),
    "checkpoint": ("the checkpoint of a resumable job", "the function that wrote it, given the same checkpoint="),
    "variables": ("a trained network's variables", "jaxsnn.training.load_variables"),
}

_LEGACY_CHECKPOINT = "jaxsnn-checkpoint-v2"  # the .npz checkpoints before format version 1


class FormatError(ValueError):
  """A file that is not the jaxsnn file it should be: not a jaxsnn file at all, truncated or corrupted, of another
  format version or kind, or altered after it was written. The message names what differs."""


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


def write_npz(path: str | os.PathLike, arrays: dict) -> None:
  """Writes a plain ``.npz`` of ``{name: array}`` atomically: an exchange file for a program that reads NumPy files
  and nothing else (the SpikingJelly side of ``benchmarks/peers.py``), not a jaxsnn file (no header, no checks).

  Args:
    path: the file.
    arrays: ``{name: array}``.
  """
  arrays = {k: np.asarray(v) for k, v in arrays.items()}
  atomic_write(path, lambda f: np.savez(f, **arrays))


def fingerprint(*parts: Any, arrays: Any = ()) -> str:
  """A digest of ``repr(parts)`` and the dtype, shape and bytes of every leaf of ``arrays``: what a resumed job must
  share with the run that wrote its checkpoint, and what a file's arrays are checked against.

  Args:
    *parts: values whose ``repr`` identifies what is fingerprinted (numbers, strings, tuples, ...).
    arrays: a pytree of arrays.

  Returns:
    A hex SHA-256 digest.
  """
  h = hashlib.sha256(repr(parts).encode())
  for leaf in jax.tree_util.tree_leaves(arrays):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# Trees: a JSON skeleton and a table of arrays.
# ----------------------------------------------------------------------------------------------------------------

def _key_entry(key) -> list:
  if isinstance(key, jax.tree_util.GetAttrKey):
    return ["attr", key.name]
  if isinstance(key, jax.tree_util.DictKey) and isinstance(key.key, (str, int)) and not isinstance(key.key, bool):
    return ["dict", key.key]
  if isinstance(key, jax.tree_util.SequenceKey):
    return ["seq", key.idx]
  if isinstance(key, jax.tree_util.FlattenedIndexKey):
    return ["flat", key.key]
  raise TypeError(f"a pytree key {key!r} of type {type(key).__name__}")


def _key_of(entry):
  kind, value = entry
  return {"attr": jax.tree_util.GetAttrKey, "dict": jax.tree_util.DictKey, "seq": jax.tree_util.SequenceKey,
          "flat": jax.tree_util.FlattenedIndexKey}[kind](value)


class Node:
  """A pytree node of a class that a file does not need (an Equinox module of the model's code, a NamedTuple): its
  children in their order, under the keys its class gave them, so that leaves, their order and their key paths are
  the original's.

  Attributes:
    type_name: the original class's qualified name (for reading only: nothing is imported).
    keys: one ``jax.tree_util`` key per child (``GetAttrKey("weight")``, ``DictKey("a")``, ``SequenceKey(0)``).
    children: the children.
  """

  __slots__ = ("type_name", "keys", "children")

  def __init__(self, type_name: str, keys: tuple, children: list):
    self.type_name, self.keys, self.children = type_name, tuple(keys), list(children)

  def __repr__(self):
    def name(key):
      return str(getattr(key, "name", getattr(key, "key", getattr(key, "idx", key))))
    inner = ", ".join(f"{name(k)}={c!r}" for k, c in zip(self.keys, self.children))
    return f"Node[{self.type_name}]({inner})"


jax.tree_util.register_pytree_with_keys(
    Node,
    lambda n: (tuple(zip(n.keys, n.children)), (n.type_name, n.keys)),
    lambda aux, children: Node(aux[0], aux[1], list(children)),
    lambda n: (tuple(n.children), (n.type_name, n.keys)))


def _is_array(x) -> bool:
  return isinstance(x, (np.ndarray, np.generic, jax.Array))


def _path_str(path: tuple) -> str:
  return "/".join(map(str, path)) or "(root)"


class _Writer:
  """Encodes a tree into a JSON skeleton and a list of arrays."""

  def __init__(self):
    self.arrays: list = []
    self.rows: list = []

  def array(self, value, path) -> dict:
    dtype = getattr(value, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
      raise TypeError(f"a typed PRNG key array at {_path_str(path)}: save jax.random.key_data(key) instead")
    a = np.asarray(value)
    a = a if a.flags.c_contiguous else np.ascontiguousarray(a)  # (ascontiguousarray makes a 0-d array 1-d)
    if a.dtype.hasobject:
      raise TypeError(f"an array of Python objects at {_path_str(path)}")
    self.rows.append({"path": _path_str(path), "dtype": str(a.dtype), "shape": list(a.shape),
                      "digest": fingerprint(arrays=a)})
    self.arrays.append(a)
    return {"array": len(self.arrays) - 1, **({"scalar": True} if isinstance(value, np.generic) else {})}

  def encode(self, tree, path: tuple = ()) -> dict:
    if tree is None or isinstance(tree, (bool, str)):
      return {"value": tree}
    if isinstance(tree, int) and type(tree) is int:
      return {"int": tree}
    if isinstance(tree, float) and type(tree) is float:
      return {"float": tree.hex()}
    if _is_array(tree):
      return self.array(tree, path)
    if type(tree) is dict:
      bad = [k for k in tree if not isinstance(k, str)]
      if bad:
        raise TypeError(f"a dict at {_path_str(path)} with keys that are not strings: {bad[:3]}")
      return {"dict": {k: self.encode(v, path + (k,)) for k, v in tree.items()}}
    if type(tree) in (list, tuple):
      return {type(tree).__name__: [self.encode(v, path + (i,)) for i, v in enumerate(tree)]}
    children = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda n: n is not tree)[0]
    if len(children) == 1 and children[0][1] is tree:  # a leaf that is neither an array nor a Python value
      raise TypeError(f"a {type(tree).__module__}.{type(tree).__qualname__} at {_path_str(path)}")
    keys, values = [], []
    for key_path, child in children:
      keys.append(_key_entry(key_path[0]))
      values.append(self.encode(child, path + (keys[-1][1],)))
    cls = type(tree)
    return {"node": f"{cls.__module__}.{cls.__qualname__}", "keys": keys, "children": values}


def _decode(skeleton, arrays: Callable[[int], np.ndarray]):
  if "value" in skeleton:
    return skeleton["value"]
  if "int" in skeleton:
    return int(skeleton["int"])
  if "float" in skeleton:
    return float.fromhex(skeleton["float"])
  if "array" in skeleton:
    a = arrays(skeleton["array"])
    return a[()] if skeleton.get("scalar") else a
  if "dict" in skeleton:
    return {k: _decode(v, arrays) for k, v in skeleton["dict"].items()}
  if "list" in skeleton:
    return [_decode(v, arrays) for v in skeleton["list"]]
  if "tuple" in skeleton:
    return tuple(_decode(v, arrays) for v in skeleton["tuple"])
  if "node" in skeleton:
    return Node(skeleton["node"], tuple(_key_of(k) for k in skeleton["keys"]),
                [_decode(v, arrays) for v in skeleton["children"]])
  raise KeyError(f"unknown entry {sorted(skeleton)}")


# ----------------------------------------------------------------------------------------------------------------
# The file format.
# ----------------------------------------------------------------------------------------------------------------

def _storable(a: np.ndarray) -> np.ndarray:
  """``a`` as NumPy can write it to ``.npy`` without pickle: dtypes of ml_dtypes (bfloat16, float8) as unsigned ints."""
  if a.dtype.isbuiltin != 2:  # 2: a dtype registered from outside NumPy
    return a
  return a.view(np.dtype(f"u{a.dtype.itemsize}"))


def _header_digest(header: dict) -> str:
  return fingerprint(json.dumps({k: v for k, v in header.items() if k != "fingerprint"}, sort_keys=True))


def _versions() -> dict:
  import jaxsnn  # the package is imported by the time anything is written
  return {"jaxsnn": jaxsnn.__version__, "jax": jax.__version__, "numpy": np.__version__}


def write(path: str | os.PathLike, kind: str, content: Any) -> str:
  """Writes ``content`` as a jaxsnn file of ``kind``, atomically (see the module docstring).

  Args:
    path: the file.
    kind: one of :data:`KINDS`.
    content: the tree to save.

  Returns:
    The file's fingerprint (also in its header).

  Raises:
    TypeError: for a value the format does not hold, naming its place in the tree and its type.
  """
  if kind not in KINDS:
    raise ValueError(f"jaxsnn.files.write: unknown kind {kind!r}; one of {sorted(KINDS)}")
  w = _Writer()
  skeleton = w.encode(content)
  header = {"format": FORMAT, "version": VERSION, "kind": kind, "writer": _versions(), "content": skeleton,
            "arrays": w.rows}
  header["fingerprint"] = _header_digest(header)

  def write_zip(f):
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
      z.writestr(HEADER, json.dumps(header, indent=None, allow_nan=False))
      for i, a in enumerate(w.arrays):
        buf = io.BytesIO()
        np.lib.format.write_array(buf, _storable(a), allow_pickle=False)
        z.writestr(f"arrays/{i}.npy", buf.getvalue())

  atomic_write(path, write_zip)
  return header["fingerprint"]


def _error(caller: str, path, what: str) -> FormatError:
  return FormatError(f"{caller}: {os.fspath(path)!r} {what}")


def _open(path, caller: str) -> zipfile.ZipFile:
  try:
    return zipfile.ZipFile(path)
  except zipfile.BadZipFile:
    with open(path, "rb") as f:
      head = f.read(4)
    if head == b"PK\x03\x04":
      raise _error(caller, path, "is truncated or corrupted: it starts as a zip archive (a jaxsnn file) but its end "
                   "is missing or damaged. Write it again.") from None
    raise _error(caller, path, "is not a jaxsnn file (not a zip archive).") from None


def _read_header(z: zipfile.ZipFile, path, caller: str) -> dict:
  if HEADER not in z.namelist():
    legacy = " (an .npz of an older jaxsnn?)" if any(n.endswith(".npy") for n in z.namelist()) else ""
    raise _error(caller, path, f"is not a jaxsnn file: it has no {HEADER}{legacy}.")
  try:
    header = json.loads(z.read(HEADER))
  except (zipfile.BadZipFile, ValueError, OSError) as e:
    raise _error(caller, path, f"is corrupted: its header {HEADER} does not read ({e}).") from None
  if not isinstance(header, dict) or header.get("format") != FORMAT:
    raise _error(caller, path, f"is not a jaxsnn file (its {HEADER} names format "
                 f"{header.get('format') if isinstance(header, dict) else None!r}).")
  return header


def _check_header(header: dict, path, caller: str, kind: str | None) -> None:
  version, writer = header.get("version"), header.get("writer") or {}
  if version != VERSION:
    import jaxsnn
    newer = isinstance(version, int) and version > VERSION
    raise _error(caller, path, f"is jaxsnn file format version {version} (written by jaxsnn "
                 f"{writer.get('jaxsnn', '?')}); this jaxsnn ({jaxsnn.__version__}) reads version {VERSION}"
                 + (": update jaxsnn to read it." if newer else ": write it again with this jaxsnn."))
  missing = sorted({"kind", "writer", "content", "arrays", "fingerprint"} - set(header))
  if missing:
    raise _error(caller, path, f"is corrupted: its header lacks {missing}.")
  if header.get("fingerprint") != _header_digest(header):
    raise _error(caller, path, "was altered after it was written: its header does not match its fingerprint.")
  if kind is not None and header.get("kind") != kind:
    got, reader = KINDS.get(header.get("kind"), (f"a file of kind {header.get('kind')!r}", "?"))
    raise _error(caller, path, f"holds {got}, not {KINDS[kind][0]} (read it with {reader}).")


def info(path: str | os.PathLike) -> dict:
  """What a jaxsnn file is, from its header alone: ``{"kind", "version", "writer", "fingerprint", "arrays"}``.

  Args:
    path: a jaxsnn file.

  Returns:
    The kind (``"network"``, ``"stats"``, ...), the format version, the versions that wrote it, its fingerprint and
    the number of arrays it holds.

  Raises:
    FormatError: for a file that is not a jaxsnn file, or of another format version, or whose header was altered.

  Example:
    >>> jaxsnn.save("snn.jaxsnn", snn)
    >>> jaxsnn.files.info("snn.jaxsnn")["kind"]
    'network'
  """
  caller = "jaxsnn.files.info"
  with _open(path, caller) as z:
    header = _read_header(z, path, caller)
  _check_header(header, path, caller, None)
  return {"kind": header["kind"], "version": header["version"], "writer": header["writer"],
          "fingerprint": header["fingerprint"], "arrays": len(header["arrays"])}


def read(path: str | os.PathLike, kind: str, *, caller: str) -> Any:
  """Reads the content of the jaxsnn file at ``path``, after checking that it is an intact file of ``kind`` of this
  format version (arrays come back as NumPy arrays).

  Raises:
    FileNotFoundError: if there is no file.
    FormatError: naming what differs (see the module docstring).
  """
  with _open(path, caller) as z:
    header = _read_header(z, path, caller)
    _check_header(header, path, caller, kind)
    rows = header["arrays"]
    cache: dict = {}

    def array(i: int) -> np.ndarray:
      if i not in cache:
        row = rows[i]
        try:
          with z.open(f"arrays/{i}.npy") as f:
            a = np.lib.format.read_array(f, allow_pickle=False)
        except (KeyError, zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
          raise _error(caller, path, f"is corrupted: the array at {row['path']} does not read ({e}).") from None
        dtype = np.dtype(row["dtype"])
        if a.dtype != dtype:
          a = a.view(dtype)
        if list(a.shape) != row["shape"] or fingerprint(arrays=a) != row["digest"]:
          raise _error(caller, path, f"was altered after it was written: the array at {row['path']} "
                       f"({row['dtype']}{row['shape']}) does not match its fingerprint.")
        cache[i] = a
      return cache[i]

    try:
      return _decode(header["content"], array)
    except (KeyError, IndexError, TypeError) as e:
      raise _error(caller, path, f"is corrupted: its content does not decode ({type(e).__name__}: {e}).") from None


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints of resumable jobs.
# ----------------------------------------------------------------------------------------------------------------

CHECKPOINT_SECONDS = 60.0
"""The one default cadence of every resumable loop's checkpoint (``checkpoint_every=None``: streaming passes,
calibration, evaluation, threshold tuning, fine-tuning, quantisation, training): a write once this many seconds of work
have passed since the last one, and at the end, so a kill loses about a minute of work whatever one step costs."""


class Cadence:
  """When a resumable loop writes its checkpoint: every ``every`` steps (an int), or, with ``every=None``, when
  :data:`CHECKPOINT_SECONDS` have passed since the last write (or the start)."""

  def __init__(self, every: int | None):
    self.every, self.last = every, time.monotonic()

  def due(self, count: int) -> bool:
    """Whether to write after the ``count``-th step of this session."""
    if self.every is not None:
      return count % self.every == 0
    return time.monotonic() - self.last >= CHECKPOINT_SECONDS

  def wrote(self) -> None:
    self.last = time.monotonic()


def save_checkpoint(path: str | os.PathLike, fingerprint_: str, tree: Any) -> None:
  """Writes ``tree`` (nested dicts with string keys, lists, tuples, numbers, strings, None and arrays) atomically as
  a jaxsnn checkpoint file at ``path``, with the job's fingerprint."""
  write(path, "checkpoint", {"job": fingerprint_, "state": tree})


def checkpoint_job(path: str | os.PathLike) -> str:
  """The job fingerprint of the checkpoint at ``path`` (for tests and tools that inspect one)."""
  return read(path, "checkpoint", caller="jaxsnn.files.checkpoint_job")["job"]


def load_checkpoint(path: str | os.PathLike, fingerprint_: str, caller: str, differs: str) -> Any | None:
  """The tree saved by :func:`save_checkpoint` at ``path`` (None if there is no file), after checking that it was
  written by the same job. Checkpoints of the ``.npz`` format before version 1 are read too (lists for tuples).

  Raises:
    FormatError: naming ``caller`` when the file is not a checkpoint (or is damaged, or of another version).
    ValueError: naming ``caller`` and what may differ (``differs``) when the checkpoint belongs to another job.
  """
  if not os.path.exists(path):
    return None
  job, state = _read_checkpoint(path, caller)
  if job != fingerprint_:
    raise ValueError(f"{caller}: the checkpoint {os.fspath(path)!r} belongs to another job ({differs}); delete it "
                     "or pass another path.")
  return state


def _read_checkpoint(path, caller: str) -> tuple[str, Any]:
  legacy = read_legacy_npz(path, _LEGACY_CHECKPOINT)
  if legacy is not None:
    return str(legacy["__fingerprint__"]), _decode_legacy(json.loads(str(legacy["__tree__"])), legacy)
  content = read(path, "checkpoint", caller=caller)
  return content["job"], content["state"]


def read_legacy_npz(path, tag: str) -> dict | None:
  """The arrays of an ``.npz`` written before format version 1 whose ``__format__`` is ``tag``; None for any other
  file (which :func:`read` then judges)."""
  try:
    with zipfile.ZipFile(path) as z:
      if "__format__.npy" not in z.namelist() or HEADER in z.namelist():
        return None
    with np.load(path, allow_pickle=False) as f:
      if str(f["__format__"]) != tag:
        return None
      return {k: f[k] for k in f.files}
  except (zipfile.BadZipFile, OSError, ValueError, KeyError):
    return None


def _decode_legacy(skeleton, arrays):
  if "dict" in skeleton:
    return {k: _decode_legacy(v, arrays) for k, v in skeleton["dict"].items()}
  if "list" in skeleton:
    return [_decode_legacy(v, arrays) for v in skeleton["list"]]
  if "value" in skeleton:
    return skeleton["value"]
  return np.asarray(arrays[skeleton["array"]])
