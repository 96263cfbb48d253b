"""The one runner of every function that reads data: batches read by the protocol of :mod:`jaxsnn._src.batches`,
padded and sharded over the mesh, a progress bar, and a resumable, fingerprinted checkpoint.

:func:`fold` streams: ``state = step(state, batch)`` over the batches, keeping only the state (calibration maxima,
histograms, accuracy counts). :func:`collect` keeps the prepared batches in memory for tools that read them several
times (SNN calibration, tuning). Both pad every batch to a multiple of the mesh's batch axis (the padding masked out)
and shard it; functions that stream pass ``progress``, ``mesh`` and ``checkpoint`` straight through.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, NamedTuple

import jax
import numpy as np

from jaxsnn._src import parallel
from jaxsnn._src.batches import Batch, as_batch, check_batches
from jaxsnn._src.files import load_checkpoint, save_checkpoint


class Prepared(NamedTuple):
  """A batch ready for the devices.

  Attributes:
    x: the input, padded to a multiple of the mesh's batch axis and sharded over it (as given without a mesh).
    labels: int ``[padded]`` (numpy; 0 in the padding), or None.
    mask: bool ``[padded]`` (numpy): True for the real examples.
    device_mask: the mask, sharded like ``x``.
    count: real examples.
  """

  x: Any
  labels: np.ndarray | None
  mask: np.ndarray
  device_mask: Any
  count: int


def prepare(batch: Batch, mesh) -> Prepared:
  """Pads ``batch`` to the mesh and shards it (unchanged without a mesh)."""
  size = parallel.padded_size(mesh, batch.size)
  mask = np.asarray(parallel.pad(batch.mask, size, False))
  labels = None if batch.labels is None else np.asarray(parallel.pad(batch.labels, size))
  x, device_mask = parallel.shard_batch(mesh, batch.x, mask)
  return Prepared(x, labels, mask, device_mask, batch.count)


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
         caller: str, mesh=None, input_key: str = "image", labels: str | None = None, progress: bool = False,
         desc: str | None = None, postfix: Callable[[Any], dict] | None = None, checkpoint=None,
         fingerprint: str | Callable[[Batch], str] | None = None, checkpoint_every: int = 10,
         differs: str = "other network data or settings") -> tuple[Any, int]:
  """Folds ``step`` over ``batches``: ``state = step(state, prepared_batch)``, resumable.

  Args:
    batches: an iterable of batches (any form of the protocol).
    step: ``(state, Prepared) -> state``.
    init: the initial state, or ``init(first_batch) -> state`` (when it depends on the data's shapes).
    caller: the public function's name, for errors.
    mesh: from :func:`jaxsnn._src.parallel.batch_mesh` (None: as given).
    input_key: the input's key in dict batches.
    labels: None if labels are not needed, else what needs them (for the error when a batch has none).
    progress: a tqdm bar in images.
    desc: the bar's label (default ``caller``).
    postfix: ``postfix(state) -> dict`` shown on the bar after each batch.
    checkpoint: a file path: the state is saved there atomically every ``checkpoint_every`` batches and at the end
      (nested dicts, lists, numbers and arrays; see :func:`jaxsnn._src.files.save_checkpoint`), and a run that finds
      it skips the batches it covers (the same batches in the same order), so the result equals an uninterrupted
      run's.
    fingerprint: what identifies the job (a string or ``f(first_batch) -> str``); a checkpoint with another one is
      refused. Required with ``checkpoint``.
    checkpoint_every: batches between checkpoint writes.
    differs: what may differ, for the refusal's message.

  Returns:
    ``(state, count)``: the final state and the number of real examples it covers.

  Raises:
    ValueError: for batches that are not an iterable of batches, a bad batch, missing labels, no batch at all, or a
      checkpoint of another job.
  """
  check_batches(batches, caller)
  if checkpoint is not None:
    if fingerprint is None:
      raise TypeError(f"{caller}: a checkpoint needs a job fingerprint")
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, (int, np.integer)) \
        or checkpoint_every < 1:
      raise ValueError(f"{caller}: checkpoint_every must be a positive int; got {checkpoint_every!r}.")
  state, done, count, seen = None, 0, 0, 0
  key = None
  with _closing(progress_bar(progress, desc or caller)) as bar:
    for i, item in enumerate(batches):
      batch = as_batch(item, caller, input_key)
      if labels is not None:
        _needs_labels(batch, caller, labels)
      if i == 0:
        if checkpoint is not None:
          key = fingerprint(batch) if callable(fingerprint) else fingerprint
          saved = load_checkpoint(checkpoint, key, caller, differs)
          if saved is not None:
            state, done, count = saved["state"], int(saved["batches"]), int(saved["count"])
            if bar is not None:
              bar.update(count)
        if state is None:
          state = init(batch) if callable(init) else init
      seen = i + 1
      if i < done:
        continue  # covered by the checkpoint
      prepared = prepare(batch, mesh)
      state = step(state, prepared)
      count += prepared.count
      if checkpoint is not None and (i + 1 - done) % checkpoint_every == 0:
        save_checkpoint(checkpoint, key, {"state": state, "batches": i + 1, "count": count})
      if bar is not None:
        bar.update(prepared.count)
        if postfix is not None:
          bar.set_postfix(postfix(state))
  if seen == 0:
    raise ValueError(f"{caller}: batches is empty; pass at least one batch.")
  if seen < done:
    raise ValueError(f"{caller}: the checkpoint {checkpoint!r} covers {done} batches but only {seen} were given; "
                     "resume with the same batches, or delete it.")
  if checkpoint is not None:
    save_checkpoint(checkpoint, key, {"state": state, "batches": seen, "count": count})
  return state, count


def collect(batches: Iterable[Any], *, caller: str, mesh=None, input_key: str = "image",
            labels: str | None = None) -> list[Prepared]:
  """The prepared batches in memory, for tools that read them several times.

  Raises:
    ValueError: as :func:`fold`; also when every example is masked out.
  """
  def keep(acc, p):
    acc.append(p)
    return acc

  out, _ = fold(batches, keep, [], caller=caller, mesh=mesh, input_key=input_key, labels=labels)
  if sum(p.count for p in out) == 0:
    raise ValueError(f"{caller}: every example of the batches is masked out; pass a few batches of training inputs.")
  return out


def size_of(x) -> int:
  """The batch size of an input pytree."""
  return int(np.shape(jax.tree_util.tree_leaves(x)[0])[0])
