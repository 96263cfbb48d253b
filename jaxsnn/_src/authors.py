"""The authors' threshold protocol, for comparison only: it leaks the test set into the thresholds.

The authors' code keeps one max per neuron *and per batch slot*, over the test loader and then the train loader, so a
test image's thresholds are at least its own activations. jaxsnn reproduces it in its own namespace,
:mod:`jaxsnn.authors_protocol`, to measure how much the leak flatters low-T accuracy; it is never a default.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxsnn._src import ir, runner
from jaxsnn._src import simulate as simulation
from jaxsnn._src.convert import SpikingNetwork
from jaxsnn._src.evaluate import Evaluation, stream_evaluation
from jaxsnn._src.ir import OUTPUT
from jaxsnn._src.simulate import Trace
from jaxsnn._src.jitting import jit


@functools.partial(jit, static_argnums=0)
def _slot_max_step(traced: ir.Traced, variables, x, running):
  rec, out = ir.ann_pass(traced, variables, x)
  rec[OUTPUT] = out
  return {k: jnp.maximum(running[k], v) for k, v in rec.items()}


def thresholds(apply_fn: Callable, variables: Any, batches: Iterable[Any], *, progress: bool = False,
               input_key: str = "image") -> dict:
  """The authors' threshold protocol, for comparison only: it LEAKS THE TEST SET into the thresholds.

  The authors' code (``snnInference_VGG16_CIFAR10.py``) records, for every ReLU site and the output, the max
  activation per neuron *and per position in the batch* (their running max keeps the batch axis), starting from 0,
  over the test loader (batch 256, not shuffled, last partial batch dropped) and then the train loader; it then runs
  the SNN on the test loader with those thresholds, so test sample ``i`` of a batch gets the thresholds of slot ``i``,
  which are at least that very sample's own activations. This flatters accuracy at small T. To reproduce it, pass
  ``batches`` = the test batches followed by the train batches, all of one batch size, then run :func:`simulate`
  on the test batches in the same order. Never use it for reported jaxsnn results: use :func:`jaxsnn.calibrate` on
  training data.

  Args:
    apply_fn: the ANN's apply function.
    variables: the ANN's variables.
    batches: input batches (any form of the batch protocol; labels are not read), all of the same batch size B,
      none padded (drop the last partial batch, as the authors do).
    progress: a tqdm bar.
    input_key: the input's key in dict batches.

  Returns:
    ``{site: array [B, *site_shape]}`` including ``"output"`` (``[B, *output_shape]``, also started at 0): the
    thresholds of every batch slot.

  Raises:
    ValueError: if ``batches`` is empty or the batch sizes differ.
  """
  caller = "jaxsnn.authors_protocol.thresholds"
  apply_fn, variables = ir.split_variables(apply_fn, variables)
  net = {}

  def init(batch):
    program, net["traced"] = ir.trace(apply_fn, variables, batch.x, caller=caller)
    net["size"], net["order"] = batch.size, [s.name for s in program.sites] + [OUTPUT]
    shapes = ir.value_shapes(program)
    running = {k: jnp.zeros(s.shape, s.dtype) for k, s in shapes[0].items()}
    running[OUTPUT] = jnp.zeros(shapes[1].shape, shapes[1].dtype)
    return running

  def step(running, p: runner.Prepared):
    if p.mask.shape[0] != net["size"] or p.count != net["size"]:
      raise ValueError(f"{caller}: a batch has {p.count} real samples but the first had {net['size']}; the protocol "
                       "keeps one threshold per batch slot, so all batches need one size, unpadded (drop the last "
                       "partial batch).")
    return _slot_max_step(net["traced"], variables, p.x, running)

  running, _ = runner.fold(batches, step, init, caller=caller, micro_batch=None, input_key=input_key,
                           progress=progress)
  return {k: running[k] for k in net["order"]}


def simulate(snn: SpikingNetwork, x: Any, slot_thresholds: Mapping[str, Any], num_steps: int, *,
             block_size: int | None = None) -> Trace:
  """Simulates ``snn`` on batch ``x`` with per-batch-slot thresholds (the authors' protocol; comparison only).

  Sample ``i`` of ``x`` runs with ``slot_thresholds[site][i]`` (``jax.vmap`` of :func:`jaxsnn.simulate` over the
  batch). See :func:`thresholds` for why this protocol leaks the test set.

  Args:
    snn: a converted network (its own thresholds are ignored).
    x: an input batch of size N <= B.
    slot_thresholds: from :func:`thresholds` (``[B, *site_shape]`` per site).
    num_steps: T.
    block_size: as in :func:`jaxsnn.simulate`.

  Returns:
    A :class:`jaxsnn.Trace` laid out as :func:`jaxsnn.simulate`'s (``outputs [T, N, ...]``).

  Raises:
    ValueError: if the slot thresholds do not cover the batch or the sites.
  """
  caller = "jaxsnn.authors_protocol.simulate"
  n = int(np.shape(jax.tree_util.tree_leaves(x)[0])[0])
  keys = set(snn.site_names) | ({OUTPUT} if snn.readout == "spike" else set())
  missing = keys - set(slot_thresholds)
  if missing:
    raise ValueError(f"{caller}: slot_thresholds lacks sites {sorted(missing)}; build it with "
                     "jaxsnn.authors_protocol.thresholds for this apply_fn.")
  th = {k: jnp.asarray(slot_thresholds[k]) for k in keys}
  slots = {np.shape(v)[0] for v in th.values()}
  if len(slots) != 1 or slots.pop() < n:
    raise ValueError(f"{caller}: slot thresholds must all have a leading slot axis of at least the batch size {n}; "
                     f"got shapes {sorted((k, np.shape(v)) for k, v in th.items())}.")
  th = {k: v[:n] for k, v in th.items()}

  def one(th_i, x_i):
    x_i = jax.tree_util.tree_map(lambda a: a[None], x_i)
    return simulation.simulate(snn.replace(thresholds=th_i), x_i, num_steps, block_size=block_size)

  tr = jax.vmap(one)(th, x)
  return Trace(outputs=jnp.moveaxis(tr.outputs[:, :, 0], 0, 1),
               pos_spikes={k: v[:, 0] for k, v in tr.pos_spikes.items()},
               neg_spikes={k: v[:, 0] for k, v in tr.neg_spikes.items()})


def evaluate(snn: SpikingNetwork, batches: Iterable[Any], slot_thresholds: Mapping[str, Any], num_steps: int, *,
             block_size: int | None = None, progress: bool = False, input_key: str = "image") -> Evaluation:
  """:func:`jaxsnn.evaluate` under the authors' protocol (comparison only: it leaks the test set).

  Each labelled batch (at most as many samples as there are slots; a shorter last batch uses the first slots) runs
  with :func:`simulate`.

  Args:
    snn: a converted network (its own thresholds are ignored).
    batches: labelled batches (any form of the batch protocol).
    slot_thresholds: from :func:`thresholds`.
    num_steps: T.
    block_size: as in :func:`jaxsnn.simulate`.
    progress: a tqdm bar.
    input_key: the input's key in dict batches.

  Returns:
    An :class:`jaxsnn.Evaluation` (the type :func:`jaxsnn.evaluate` returns) with the spike totals (no recorded
    steps).
  """
  return stream_evaluation(lambda p: simulate(snn, p.x, slot_thresholds, num_steps, block_size=block_size), snn,
                           batches, num_steps, tallies=True, caller="jaxsnn.authors_protocol.evaluate",
                           micro_batch=None, progress=progress, input_key=input_key)
