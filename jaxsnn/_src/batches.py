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

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Callable, NamedTuple

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


def example_spec(x) -> tuple:
  """The input's structure and every leaf's per-example shape and dtype."""
  leaves, treedef = jax.tree_util.tree_flatten(x)
  return treedef, tuple((tuple(np.shape(a)[1:]), np.dtype(a.dtype)) for a in leaves)


def _show(spec) -> str:
  _, leaves = spec
  return ", ".join(f"{shape} {dtype}" for shape, dtype in leaves)


def non_finite_rows(batch: Batch) -> np.ndarray:
  """bool ``[size]``: real examples whose input holds a NaN or an infinity."""
  bad = np.zeros(batch.size, bool)
  if batch.size == 0:
    return bad
  for leaf in jax.tree_util.tree_leaves(batch.x):
    a = np.asarray(leaf)
    if np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.complexfloating):
      bad |= ~np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)
    elif a.dtype.kind == "V" or str(a.dtype) == "bfloat16":
      bad |= ~np.isfinite(a.astype(np.float32).reshape(a.shape[0], -1)).all(axis=1)
  return bad & batch.mask


def _concat(parts: list, caller: str) -> Batch:
  x = jax.tree_util.tree_map(lambda *leaves: np.concatenate(leaves), *[b.x for b in parts])
  y = None if any(b.labels is None for b in parts) else np.concatenate([b.labels for b in parts])
  return Batch(x, y, np.ones(_input_size(x, caller), bool))


def rechunk(batches: Iterable[Any], size: int, caller: str, input_key: str = INPUT_KEY,
            check: Callable[[Batch], None] | None = None, limit: int | None = None) -> Iterator[Batch]:
  """The real (unmasked) examples of ``batches``, in order, cut into batches of exactly ``size`` examples (the last
  one shorter if the examples do not divide), with no padding and no mask.

  What a computation sees depends only on the examples and their order, never on how the caller cut, padded or masked
  them: the runner's construction for numbers that padding, masking and sharding cannot change.

  Args:
    batches: any iterable of batches of the protocol.
    size: examples per output batch.
    caller: the public function's name, for errors.
    input_key: the input's key in dict batches.
    check: ``check(batch)`` on every batch as read (before compaction), e.g. that it has labels.
    limit: stop after this many real examples (None: read every batch).

  Yields:
    :class:`Batch` es of ``size`` real examples (labels kept where every batch has them).
  """
  parts, pending, got, spec = [], 0, 0, None
  for item in batches:
    if limit is not None and got >= limit:
      break
    b = as_batch(item, caller, input_key)
    if check is not None:
      check(b)
    this = example_spec(b.x)
    if spec is None:
      spec = this
    elif this != spec:
      raise ValueError(f"{caller}: a batch's examples have shape and dtype {_show(this)}, the first batch's "
                       f"{_show(spec)}; every batch of a stream must hold the same kind of input.")
    rows = np.flatnonzero(b.mask)
    if limit is not None:
      rows = rows[:limit - got]
    got += len(rows)
    if len(rows) == b.size:
      real = b._replace(mask=np.ones(b.size, bool))
    else:
      real = Batch(jax.tree_util.tree_map(lambda a, r=rows: np.asarray(a)[r], b.x),
                   None if b.labels is None else b.labels[rows], np.ones(len(rows), bool))
    start = 0
    while start < len(rows):
      n = min(size - pending, len(rows) - start)
      if start == 0 and n == len(rows):
        parts.append(real)
      else:
        parts.append(Batch(jax.tree_util.tree_map(lambda a, s=start, n=n: np.asarray(a)[s:s + n], real.x),
                           None if real.labels is None else real.labels[start:start + n], np.ones(n, bool)))
      pending += n
      start += n
      if pending == size:
        yield parts[0] if len(parts) == 1 else _concat(parts, caller)
        parts, pending = [], 0
  if pending:
    yield parts[0] if len(parts) == 1 else _concat(parts, caller)


def take(batches: Iterable[Any], num_examples: int, batch_size: int, caller: str,
         input_key: str = INPUT_KEY) -> list:
  """The first ``num_examples`` real (unmasked) examples of ``batches``, cut into batches of ``batch_size`` (the last
  one shorter if it does not divide): a subset of the data for a tool that needs fewer examples than given.

  Returns:
    A list of :class:`Batch` (no padding; labels kept where the batches have them).
  """
  return list(rechunk(batches, batch_size, caller, input_key, limit=num_examples))
