"""The authors' threshold protocol, for comparison only: it leaks the test set into the thresholds.

The authors' code keeps one max per neuron *and per batch slot*, over the test loader and then the train loader, so a
test image's thresholds are at least its own activations. jaxsnn reproduces it under explicit names
(:func:`authors_thresholds`, :func:`simulate_authors`) to measure how much the leak flatters low-T accuracy; it is never
a default.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxsnn._src import ir
from jaxsnn._src.calibrate import check_batches
from jaxsnn._src.convert import SpikingNetwork
from jaxsnn._src.ir import OUTPUT
from jaxsnn._src.simulate import Trace, simulate, stream


@functools.partial(jax.jit, static_argnums=0)
def _slot_max_step(traced: ir.Traced, variables, x, running):
  program = ir.build_program(traced.fn, variables, x, caller="jaxsnn.authors_thresholds")
  rec, out = ir.site_values(program, variables, x)
  rec[OUTPUT] = out
  return {k: jnp.maximum(running[k], v) for k, v in rec.items()}


def authors_thresholds(apply_fn: Callable, variables: Any, batches: Iterable[Any]) -> dict:
  """The authors' threshold protocol, for comparison only: it LEAKS THE TEST SET into the thresholds.

  The authors' code (``snnInference_VGG16_CIFAR10.py``) records, for every ReLU site and the output, the max
  activation per neuron *and per position in the batch* (their running max keeps the batch axis), starting from 0,
  over the test loader (batch 256, not shuffled, last partial batch dropped) and then the train loader; it then runs
  the SNN on the test loader with those thresholds, so test sample ``i`` of a batch gets the thresholds of slot ``i``,
  which are at least that very sample's own activations. This flatters accuracy at small T. To reproduce it, pass
  ``batches`` = the test batches followed by the train batches, all of one batch size, then run
  :func:`simulate_authors` on the test batches in the same order. Never use it for reported jaxsnn results: use
  :func:`calibrate` on training data.

  Args:
    apply_fn: the ANN's apply function.
    variables: the ANN's variables.
    batches: input batches, all of the same batch size B (drop the last partial batch, as the authors do).

  Returns:
    ``{site: array [B, *site_shape]}`` including ``"output"`` (``[B, *output_shape]``, also started at 0): the
    thresholds of every batch slot.

  Raises:
    ValueError: if ``batches`` is empty or the batch sizes differ.
  """
  caller = "jaxsnn.authors_thresholds"
  check_batches(batches, caller)
  running, size, traced = None, None, None
  for i, x in enumerate(batches):
    b = int(np.shape(jax.tree_util.tree_leaves(x)[0])[0])
    if running is None:
      size = b
      program, traced = ir.trace(apply_fn, variables, x, caller=caller)
      shapes = jax.eval_shape(lambda v, x: ir.site_values(program, v, x), variables, x)
      running = {k: jnp.zeros(s.shape, s.dtype) for k, s in shapes[0].items()}
      running[OUTPUT] = jnp.zeros(shapes[1].shape, shapes[1].dtype)
    elif b != size:
      raise ValueError(f"{caller}: batch {i} has {b} samples but the first had {size}; the protocol keeps one "
                       "threshold per batch slot, so all batches need one size (drop the last partial batch).")
    running = _slot_max_step(traced, variables, x, running)
  if running is None:
    raise ValueError(f"{caller}: batches is empty.")
  return running


def simulate_authors(snn: SpikingNetwork, x: Any, slot_thresholds: Mapping[str, Any], num_steps: int,
                     block_size: int | None = None):
  """Simulates ``snn`` on batch ``x`` with per-batch-slot thresholds (the authors' protocol; comparison only).

  Sample ``i`` of ``x`` runs with ``slot_thresholds[site][i]`` (``jax.vmap`` of :func:`jaxsnn.simulate` over the
  batch). See :func:`authors_thresholds` for why this protocol leaks the test set.

  Args:
    snn: a converted network (its own thresholds are ignored).
    x: an input batch of size N <= B.
    slot_thresholds: from :func:`authors_thresholds` (``[B, *site_shape]`` per site).
    num_steps: T.
    block_size: as in :func:`jaxsnn.simulate`.

  Returns:
    A :class:`jaxsnn.Trace` laid out as :func:`jaxsnn.simulate`'s (``outputs [T, N, ...]``).

  Raises:
    ValueError: if the slot thresholds do not cover the batch or the sites.
  """
  caller = "jaxsnn.simulate_authors"
  n = int(np.shape(jax.tree_util.tree_leaves(x)[0])[0])
  keys = set(snn.site_names) | ({OUTPUT} if snn.readout == "spike" else set())
  missing = keys - set(slot_thresholds)
  if missing:
    raise ValueError(f"{caller}: slot_thresholds lacks sites {sorted(missing)}; build it with "
                     "jaxsnn.authors_thresholds for this apply_fn.")
  th = {k: jnp.asarray(slot_thresholds[k]) for k in keys}
  slots = {np.shape(v)[0] for v in th.values()}
  if len(slots) != 1 or slots.pop() < n:
    raise ValueError(f"{caller}: slot thresholds must all have a leading slot axis of at least the batch size {n}; "
                     f"got shapes {sorted((k, np.shape(v)) for k, v in th.items())}.")
  th = {k: v[:n] for k, v in th.items()}

  def one(th_i, x_i):
    x_i = jax.tree_util.tree_map(lambda a: a[None], x_i)
    return simulate(snn.replace(thresholds=th_i), x_i, num_steps, block_size)

  tr = jax.vmap(one)(th, x)
  return Trace(outputs=jnp.moveaxis(tr.outputs[:, :, 0], 0, 1),
               pos_spikes={k: v[:, 0] for k, v in tr.pos_spikes.items()},
               neg_spikes={k: v[:, 0] for k, v in tr.neg_spikes.items()})


def evaluate_authors(snn: SpikingNetwork, batches: Iterable[Any], slot_thresholds: Mapping[str, Any], num_steps: int,
                     block_size: int | None = None, *, progress: bool = False) -> dict:
  """:func:`jaxsnn.evaluate` under the authors' protocol (comparison only: it leaks the test set).

  Each batch of ``(x, labels[, mask])`` (at most as many samples as there are slots; a shorter last batch uses the
  first slots) runs with :func:`simulate_authors`.

  Returns:
    As :func:`jaxsnn.evaluate` (without recorded steps).
  """
  def run(x, mask):
    return simulate_authors(snn, x, slot_thresholds, num_steps, block_size)

  return stream(run, batches, num_steps, progress=progress, caller="jaxsnn.evaluate_authors")
