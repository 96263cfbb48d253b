"""The one batch protocol: what every function that reads data accepts, and how it is read.

A *batch* is any of:

* an input: an array with a leading batch axis, or a pytree of them for a multi-input network only inside the forms
  below (a bare tuple is read as ``(x, labels[, mask])``);
* a tuple ``(x,)``, ``(x, labels)`` or ``(x, labels, mask)``; ``labels`` may be None;
* a dict with the input under ``"image"`` (or the key named by ``input_key=``), and optionally ``"label"`` and
  ``"mask"``: the dicts :func:`jaxsnn.data.batches` and tfds's numpy iterators yield (other keys are ignored).

``labels`` are integers ``[batch]`` (or one-hot ``[batch, classes]``), ``mask`` is a boolean ``[batch]`` marking the
real examples of a padded batch: rows where it is False never enter any statistic, accuracy or calibration.

*Batches* (what the functions take) are any iterable or iterator of batches. What is ambiguous is an error, never a
guess: a boolean second element of a tuple (a mask where labels belong), a non-integer label array, one array or one
dict passed where an iterable of batches belongs, or one ``(x, labels)`` tuple passed as if it were many batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

INPUT_KEY = "image"
FORMS = ("a batch is an input array, a tuple (x,), (x, labels) or (x, labels, mask), or a dict "
         "{'image': x, 'label': labels, 'mask': mask} (as jaxsnn.data.batches yields)")


class Batch(NamedTuple):
  """One batch, read.

  Attributes:
    x: the input pytree; every leaf has the leading batch axis.
    labels: int ``[size]`` (numpy), or None.
    mask: bool ``[size]`` (numpy): True for the real examples.
  """

  x: Any
  labels: np.ndarray | None
  mask: np.ndarray

  @property
  def size(self) -> int:
    return int(self.mask.shape[0])

  @property
  def count(self) -> int:
    """Real (unmasked) examples."""
    return int(self.mask.sum())


def _is_array(a) -> bool:
  return isinstance(a, (np.ndarray, jax.Array))


def _describe(item) -> str:
  if _is_array(item):
    return f"an array of shape {np.shape(item)} and dtype {item.dtype}"
  if isinstance(item, Mapping):
    return f"a dict with keys {sorted(map(str, item))}"
  if isinstance(item, (tuple, list)):
    return f"a {type(item).__name__} of {len(item)} elements ({', '.join(_describe(i) for i in item[:3])})"
  return f"a {type(item).__name__}"


def _input_size(x, caller: str) -> int:
  leaves = jax.tree_util.tree_leaves(x)
  if not leaves:
    raise ValueError(f"{caller}: a batch's input holds no array; {FORMS}.")
  sizes = set()
  for leaf in leaves:
    if not (_is_array(leaf) or np.ndim(leaf) > 0):
      raise ValueError(f"{caller}: a batch's input must be arrays with a leading batch axis; got "
                       f"{_describe(leaf)}.")
    if np.ndim(leaf) < 1:
      raise ValueError(f"{caller}: every input array needs a leading batch axis; got a scalar.")
    sizes.add(int(np.shape(leaf)[0]))
  if len(sizes) != 1:
    raise ValueError(f"{caller}: the input arrays of a batch have different batch sizes {sorted(sizes)}.")
  return sizes.pop()


def _labels(labels, size: int, caller: str) -> np.ndarray | None:
  if labels is None:
    return None
  if not (_is_array(labels) or isinstance(labels, (list, tuple))):
    raise ValueError(f"{caller}: labels must be an integer array [batch]; got {_describe(labels)}.")
  a = np.asarray(labels)
  if a.dtype == np.bool_:
    raise ValueError(f"{caller}: the labels are booleans: a mask where labels belong? Pass (x, None, mask), "
                     "(x, labels, mask) or {'image': x, 'mask': mask}; labels must be integer class indices.")
  if a.ndim == 2 and a.shape[0] == size:  # one-hot
    ok = np.all((a == 0) | (a == 1)) and np.all(a.sum(axis=1) == 1)
    if not ok:
      raise ValueError(f"{caller}: 2-D labels of shape {a.shape} are not one-hot (one 1 per row); pass integer class "
                       "indices [batch]. (For a multi-input network, put its inputs in the first element: "
                       "((x1, x2), labels).)")
    return a.argmax(axis=1).astype(np.int32)
  if not np.issubdtype(a.dtype, np.integer):
    raise ValueError(f"{caller}: labels must be integer class indices; got dtype {a.dtype} and shape {a.shape}. "
                     "(For a multi-input network, put its inputs in the first element: ((x1, x2), labels).)")
  if a.shape != (size,):
    raise ValueError(f"{caller}: labels of shape {a.shape} do not match the batch of {size} examples.")
  return a


def _mask(mask, size: int, caller: str) -> np.ndarray:
  if mask is None:
    return np.ones(size, bool)
  a = np.asarray(mask)
  if a.dtype != np.bool_:
    raise ValueError(f"{caller}: a mask must be a boolean array [batch] (True for real examples); got dtype "
                     f"{a.dtype}.")
  if a.shape != (size,):
    raise ValueError(f"{caller}: a mask of shape {a.shape} does not match the batch of {size} examples.")
  return a


def as_batch(item: Any, caller: str, input_key: str = INPUT_KEY) -> Batch:
  """Reads one batch in any of the protocol's forms.

  Raises:
    ValueError: for any other form, a bad label or mask, or input arrays of different batch sizes; the message
      says what was received and what to pass.
  """
  if isinstance(item, Batch):
    return item
  if _is_array(item):
    x, labels, mask = item, None, None
  elif isinstance(item, Mapping):
    if input_key not in item:
      raise ValueError(f"{caller}: a batch dict needs the input under {input_key!r}; got keys "
                       f"{sorted(map(str, item))}. Name the input's key with input_key=..., or pass (x, labels).")
    x, labels, mask = item[input_key], item.get("label"), item.get("mask")
  elif type(item) is tuple:  # a plain tuple (a NamedTuple input is a pytree, not a batch form)
    if not 1 <= len(item) <= 3:
      raise ValueError(f"{caller}: a batch tuple has 1 to 3 elements, (x,), (x, labels) or (x, labels, mask); got "
                       f"{_describe(item)}. For a multi-input network put its inputs in the first element: "
                       "((x1, x2), labels).")
    x, labels, mask = (tuple(item) + (None, None))[:3]
  else:
    raise ValueError(f"{caller}: cannot read a batch from {_describe(item)}; {FORMS}.")
  size = _input_size(x, caller)
  return Batch(x, _labels(labels, size, caller), _mask(mask, size, caller))


def check_batches(batches: Any, caller: str) -> None:
  """Rejects what cannot be an iterable of batches, or is one batch where many belong.

  Raises:
    ValueError: saying what was received and what to pass instead.
  """
  if _is_array(batches) or isinstance(batches, (Mapping, Batch, str, bytes)):
    raise ValueError(
        f"{caller}: batches must be an iterable of batches (a list or a generator), but got "
        f"{_describe(batches)}: iterating over it would feed single examples or keys. Pass [x] for one batch, or "
        "e.g. (x[i:i + 500] for i in range(0, len(x), 500)).")
  if type(batches) is tuple and 2 <= len(batches) <= 3 and _is_array(batches[0]) and np.ndim(batches[0]) >= 2:
    second = batches[1]
    if second is None or (_is_array(second) and np.ndim(second) in (1, 2)
                          and np.shape(second)[0] == np.shape(batches[0])[0] and np.ndim(second) < np.ndim(batches[0])):
      raise ValueError(f"{caller}: batches is one batch ({_describe(batches)}), not an iterable of batches: pass "
                       "[(x, labels)] for a single batch.")
  if not isinstance(batches, Iterable):
    raise ValueError(f"{caller}: batches must be an iterable of batches; got {_describe(batches)}.")


def take(batches: Iterable[Any], num_examples: int, batch_size: int, caller: str,
         input_key: str = INPUT_KEY) -> list:
  """The first ``num_examples`` real (unmasked) examples of ``batches``, cut into batches of ``batch_size`` (the last
  one shorter if it does not divide): a subset of the data for a tool that needs fewer examples than given.

  Returns:
    A list of :class:`Batch` (no padding; labels kept where the batches have them).
  """
  out, xs, ys, got = [], [], [], 0

  def flush():
    x = jax.tree_util.tree_map(lambda *leaves: np.concatenate(leaves), *xs)
    y = None if any(v is None for v in ys) else np.concatenate(ys)
    out.append(Batch(x, y, np.ones(_input_size(x, caller), bool)))
    xs.clear()
    ys.clear()

  pending = 0
  for item in batches:
    b = as_batch(item, caller, input_key)
    rows = np.flatnonzero(b.mask)[:num_examples - got]
    start = 0
    while start < len(rows):
      part = rows[start:start + batch_size - pending]
      xs.append(jax.tree_util.tree_map(lambda a, part=part: np.asarray(a)[part], b.x))
      ys.append(None if b.labels is None else b.labels[part])
      pending += len(part)
      start += len(part)
      if pending == batch_size:
        flush()
        pending = 0
    got += len(rows)
    if got >= num_examples:
      break
  if pending:
    flush()
  return out
