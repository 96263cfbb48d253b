"""The one runner of every function that streams data: batches read by the protocol of :mod:`jaxsnn._src.batches`,
cut into micro-batches of one fixed shape, sharded over the mesh, a progress bar, and a resumable, fingerprinted
checkpoint.

Determinism by construction. XLA promises the same bits for the same program on the same shapes and nothing across
shapes: on some CPUs a matmul's row differs by an ULP when the batch has more rows. So the runner never lets a
computation see the caller's batch shapes: the real (unmasked) examples of the stream, in order, are cut into
*micro-batches* of exactly ``micro_batch`` examples per device (the last one padded with zeros, masked out), and every
call of a step function gets ``devices x micro_batch`` examples, each device one micro-batch. An example therefore
meets the same program at the same shape and the same place whatever the caller's batches, padding, masks or device
count; reductions that are not exact (float sums) are made per micro-batch and added in micro-batch order
(:func:`sum_rows`, :func:`micro_sums`). What this guarantees: a streaming function's result depends only on the real
examples, their order and ``micro_batch`` (and the CPU and kernels that compute it); padding, masking, batch sizes, 1
or N devices and resuming change no number.

:func:`fold` streams: ``state = step(state, prepared)`` over the micro-batch groups, keeping only the state
(calibration maxima, histograms, accuracy counts). :func:`collect` keeps the prepared groups in memory for tools that
read them several times (SNN calibration, tuning).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, NamedTuple

import jax
import numpy as np

from jaxsnn._src import checks, parallel
from jaxsnn._src.batches import Batch, as_batch, check_batches, non_finite_rows, rechunk
from jaxsnn._src.files import Cadence, load_checkpoint, save_checkpoint

MICRO_BATCH = 128
"""Examples per device in every computation of the streaming functions (their ``micro_batch=`` default)."""


class Prepared(NamedTuple):
  """A group of micro-batches ready for the devices.

  Attributes:
    x: the input, ``[groups * micro_batch, ...]``, sharded over the mesh's batch axis (one micro-batch per device).
    labels: int ``[groups * micro_batch]`` (numpy; 0 in the padding), or None.
    mask: bool ``[groups * micro_batch]`` (numpy): True for the real examples (all but the padding of the last one).
    device_mask: the mask, sharded like ``x``.
    count: real examples.
    groups: micro-batches in the group (the devices of the mesh's batch axis; 1 without a mesh).
  """

  x: Any
  labels: np.ndarray | None
  mask: np.ndarray
  device_mask: Any
  count: int
  groups: int = 1


def check_micro_batch(micro_batch, caller: str) -> int:
  return checks.positive_int(micro_batch, "micro_batch", caller, "examples per device in each computation")


def groups_of(mesh) -> int:
  """Micro-batches per call: the size of the mesh's batch axis (1 without a mesh)."""
  return parallel.padded_size(mesh, 1)


def prepare(batch: Batch, mesh, size: int | None = None) -> Prepared:
  """Pads ``batch`` to ``size`` rows (default: a multiple of the mesh's batch axis) and shards it."""
  size = parallel.padded_size(mesh, batch.size) if size is None else size
  mask = np.asarray(parallel.pad(batch.mask, size, False))
  labels = None if batch.labels is None else np.asarray(parallel.pad(batch.labels, size))
  x = parallel.pad(batch.x, size)
  x, device_mask = parallel.shard_batch(mesh, x, mask)
  return Prepared(x, labels, mask, device_mask, batch.count, groups_of(mesh) if size % groups_of(mesh) == 0 else 1)


def sum_rows(total, values, p: Prepared) -> np.ndarray:
  """``total`` (None for zero) plus the float64 sum over the real rows of ``values`` (``[rows, ...]``, host or
  device): summed per micro-batch and added one micro-batch after the other, so that one device and many make the same
  additions in the same order."""
  a = np.asarray(values, np.float64)
  for part, m in zip(np.split(a, p.groups), np.split(p.mask, p.groups)):
    s = part[m].sum(axis=0)
    total = s if total is None else total + s
  return total


def micro_sums(values, groups: int):
  """``values`` ``[rows, ...]`` summed over the rows of each micro-batch: ``[groups, ...]`` (inside jit; each device
  sums its own micro-batch, the same computation at the same shape as on one device). Add the groups in order on the
  host (:func:`add_in_order`)."""
  return values.reshape((groups, -1) + values.shape[1:]).sum(axis=1)


def add_in_order(total, parts) -> np.ndarray:
  """``total + parts[0] + parts[1] + ...`` in float64, in micro-batch order."""
  parts = np.asarray(parts, np.float64)
  for part in parts:
    total = part if total is None else total + part
  return total


def _needs_labels(batch: Batch, caller: str, why: str) -> None:
  if batch.labels is None:
    raise ValueError(f"{caller}: {why} needs labels, but a batch has none; pass (x, labels[, mask]) tuples or dicts "
                     "with a 'label' entry.")


def progress_bar(enabled: bool, desc: str, unit: str = "img", total: int | None = None, initial: int = 0):
  """A tqdm bar, or None when ``enabled`` is False or tqdm is not installed (progress is a nicety, not a
  dependency)."""
  if not enabled:
    return None
  try:
    from tqdm.auto import tqdm
  except ImportError:
    return None
  return tqdm(desc=desc, unit=unit, total=total, initial=initial)


@contextlib.contextmanager
def _closing(bar):
  try:
    yield bar
  finally:
    if bar is not None:
      bar.close()


def fold(batches: Iterable[Any], step: Callable[[Any, Prepared], Any], init: Any | Callable[[Batch], Any], *,
         caller: str, mesh=None, micro_batch: int | None = MICRO_BATCH, input_key: str = "image",
         labels: str | None = None, classes: int | None = None, finite: str | None = None, progress: bool = False,
         desc: str | None = None,
         postfix: Callable[[Any], dict] | None = None, checkpoint=None,
         fingerprint: str | Callable[[Batch], str] | None = None, checkpoint_every: int | None = None,
         differs: str = "other network data or settings") -> tuple[Any, int]:
  """Folds ``step`` over the stream's micro-batch groups: ``state = step(state, prepared)``, resumable.

  Args:
    batches: an iterable of batches (any form of the protocol).
    step: ``(state, Prepared) -> state``.
    init: the initial state, or ``init(first_group) -> state`` (when it depends on the data's shapes).
    caller: the public function's name, for errors.
    mesh: from :func:`jaxsnn._src.parallel.batch_mesh` (None: one device).
    micro_batch: examples per device in each call of ``step`` (see the module docstring); None: each batch as the
      caller cut it, only padded to a multiple of the devices (for protocols where a batch's slots mean something:
      the authors' per-slot thresholds). Under the caller's own mesh (``jax.set_mesh``) batches are always used as
      they are cut and sharded (the caller decides their shapes).
    input_key: the input's key in dict batches.
    labels: None if labels are not needed, else what needs them (for the error when a batch has none).
    classes: with labels, the number of classes: a label outside ``[0, classes)`` on a real example is an error.
    finite: None, or why the inputs must be finite: a NaN or an infinity in a real example is then an error.
    progress: a tqdm bar in images.
    desc: the bar's label (default ``caller``).
    postfix: ``postfix(state) -> dict`` shown on the bar after each group.
    checkpoint: a file path: the state is saved there atomically (see ``checkpoint_every``) and at the end
      (nested dicts, lists, numbers and arrays; see :func:`jaxsnn._src.files.save_checkpoint`), and a run that finds
      it skips the examples it covers (the same examples in the same order), so the result equals an uninterrupted
      run's.
    fingerprint: what identifies the job (a string or ``f(first_group) -> str``); a checkpoint with another one is
      refused. Required with ``checkpoint``.
    checkpoint_every: micro-batch groups between checkpoint writes; None (the default): once a minute of work.
    differs: what may differ, for the refusal's message.

  Returns:
    ``(state, count)``: the final state and the number of real examples it covers.

  Raises:
    ValueError: for batches that are not an iterable of batches, a bad batch, missing or out-of-range labels, no
      batch or no real example at all, or a checkpoint of another job.
  """
  check_batches(batches, caller)
  if micro_batch is not None:
    micro_batch = check_micro_batch(micro_batch, caller)
  if checkpoint is not None:
    if fingerprint is None:
      raise TypeError(f"{caller}: a checkpoint needs a job fingerprint")
    checkpoint_every = checks.checkpoint_every(checkpoint_every, caller)
  cadence = Cadence(checkpoint_every)
  groups = groups_of(mesh)
  # Under the caller's own mesh (jax.set_mesh) the batches are used as they are cut and sharded.
  size = None if micro_batch is None or (mesh is None and parallel.user_mesh()) else groups * micro_batch
  read = {"batches": 0}

  def check(batch: Batch) -> None:
    read["batches"] += 1
    _check(batch, caller, labels, classes, finite)

  state, done, count, seen = None, 0, 0, 0
  key = None
  with _closing(progress_bar(progress, desc or caller)) as bar:
    if size is None:
      chunks = (b for b in (as_batch(item, caller, input_key) for item in batches) if check(b) or b.count)
    else:
      chunks = rechunk(batches, size, caller, input_key, check)
    for i, chunk in enumerate(chunks):
      if i == 0:
        if checkpoint is not None:
          key = fingerprint(chunk) if callable(fingerprint) else fingerprint
          key = f"{key}/micro_batch={micro_batch}x{groups}"
          saved = load_checkpoint(checkpoint, key, caller, differs)
          if saved is not None:
            state, done, count = saved["state"], int(saved["groups"]), int(saved["count"])
            if bar is not None:
              bar.update(count)
        if state is None:
          state = init(chunk) if callable(init) else init
      seen = i + 1
      if i < done:
        continue  # covered by the checkpoint
      prepared = prepare(chunk, mesh, size)
      state = step(state, prepared)
      count += prepared.count
      if checkpoint is not None and cadence.due(i + 1 - done):
        save_checkpoint(checkpoint, key, {"state": state, "groups": i + 1, "count": count})
        cadence.wrote()
      if bar is not None:
        bar.update(prepared.count)
        if postfix is not None:
          bar.set_postfix(postfix(state))
  if read["batches"] == 0:
    raise ValueError(f"{caller}: batches is empty; pass at least one batch.")
  if seen == 0:
    raise ValueError(f"{caller}: every example of the batches is masked out (or every batch is empty); nothing to "
                     "compute.")
  if seen < done:
    raise ValueError(f"{caller}: the checkpoint {checkpoint!r} covers more examples ({count}) than the batches "
                     "hold; resume with the same batches, or delete it.")
  if checkpoint is not None:
    save_checkpoint(checkpoint, key, {"state": state, "groups": seen, "count": count})
  return state, count


def _check(batch: Batch, caller: str, labels: str | None, classes: int | None, finite: str | None) -> None:
  """What a function asks of every batch it reads: labels (in ``[0, classes)``), finite inputs."""
  if labels is not None:
    _needs_labels(batch, caller, labels)
    if classes is not None:
      check_labels(batch.labels[batch.mask], classes, caller)
  if finite is not None:
    check_finite(batch, caller, finite)


def labelled_once(batches: Iterable[Any], what: str, input_key: str = "image",
                  classes: int | None = None) -> list:
  """Held-out batches read several times (validation), checked once and kept (a one-shot iterator is read here):
  labelled, labels in ``[0, classes)``, at least one real example.

  Raises:
    ValueError: naming ``what`` (e.g. ``"jaxsnn.finetune: validation"``).
  """
  check_batches(batches, what)
  kept, count = list(batches), 0
  for item in kept:
    batch = as_batch(item, what, input_key)
    if batch.labels is None:
      raise ValueError(f"{what}: a batch has no labels; validation needs (x, labels) batches.")
    _check(batch, what, "validation", classes, None)
    count += batch.count
  if count == 0:
    raise ValueError(f"{what} is empty (no unmasked example); pass labelled held-out batches, or None.")
  return kept


def check_finite(batch: Batch, caller: str, why: str) -> None:
  """Raises if a real example's input holds a NaN or an infinity."""
  bad = non_finite_rows(batch)
  if bad.any():
    raise ValueError(f"{caller}: {int(bad.sum())} of {batch.count} examples of a batch hold a NaN or an infinity in "
                     f"their input (the first at row {int(np.flatnonzero(bad)[0])}); {why}. Check the data and its "
                     "normalisation.")


def check_labels(labels: np.ndarray, classes: int, caller: str) -> None:
  """Raises if a label is outside ``[0, classes)``, naming the offending values and how many there are."""
  bad = (labels < 0) | (labels >= classes)
  if bad.any():
    values = np.unique(labels[bad])
    shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
    hint = " (1-based labels? subtract 1)" if labels.min() >= 1 and labels.max() == classes else ""
    raise ValueError(f"{caller}: {int(bad.sum())} of {labels.size} labels of a batch are outside [0, {classes}) (the "
                     f"network has {classes} outputs): {shown}{hint}. Labels must be class indices 0..{classes - 1}.")


def collect(batches: Iterable[Any], *, caller: str, mesh=None, micro_batch: int = MICRO_BATCH,
            input_key: str = "image", labels: str | None = None, classes: int | None = None,
            finite: str | None = None) -> list[Prepared]:
  """The stream's prepared micro-batch groups in memory, for tools that read them several times.

  Raises:
    ValueError: as :func:`fold`.
  """
  def keep(acc, p):
    acc.append(p)
    return acc

  out, _ = fold(batches, keep, [], caller=caller, mesh=mesh, micro_batch=micro_batch, input_key=input_key,
                labels=labels, classes=classes, finite=finite)
  return out


def as_given(batches: Iterable[Any], *, caller: str, input_key: str = "image", labels: str | None = None,
             classes: int | None = None, finite: str | None = None) -> list[Prepared]:
  """The batches as the caller cut them (one device, no re-chunking), in memory: for optimisers whose steps are the
  caller's batches (one gradient step per batch), where the batch is part of the algorithm.

  Raises:
    ValueError: as :func:`fold`.
  """
  check_batches(batches, caller)
  out = []
  for item in batches:
    batch = as_batch(item, caller, input_key)
    _check(batch, caller, labels, classes, finite)
    if batch.size:
      out.append(prepare(batch, None))
  if not out:
    raise ValueError(f"{caller}: batches is empty; pass at least one batch.")
  if sum(p.count for p in out) == 0:
    raise ValueError(f"{caller}: every example of the batches is masked out; nothing to compute.")
  return out


def size_of(x) -> int:
  """The batch size of an input pytree."""
  return int(np.shape(jax.tree_util.tree_leaves(x)[0])[0])
