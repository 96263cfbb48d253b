"""Tuning through the simulated SNN, with the neuron's own surrogate gradient (:mod:`jaxsnn.surrogates`; the forward
spikes are the network's, exactly): :func:`tune_snn` (per-channel thresholds, offsets and initial potentials, towards
the ANN's logits) and :func:`finetune` (the weights, towards the labels or the ANN)."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsnn._src import checks, ir, loop, parallel, runner, surrogates
from jaxsnn._src.batches import as_batch, check_batches
from jaxsnn._src.convert import SpikingNetwork
from jaxsnn._src.evaluate import evaluate
from jaxsnn._src.files import fingerprint
from jaxsnn._src.reports import Report
from jaxsnn._src.simulate import check_batch, check_snn, simulate
from jaxsnn._src.jitting import jit

TUNABLE = ("thresholds", "offsets", "initial_potential")
DEFAULT_SURROGATE = surrogates.sigmoid(2.0)


def _channels(shape) -> int:
  return int(shape[-1]) if len(shape) else 1


def _off_mesh(mesh, tree):
  """Arrays of the default device, not tied to the mesh they were trained on (a network used under another mesh would
  otherwise clash with it)."""
  return tree if mesh is None else jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a)), tree)


def _tuned(params, net: SpikingNetwork) -> SpikingNetwork:
  """The network with tune_snn's per-channel parameters applied."""
  names = net.site_names
  th = {n: (net.thresholds[n] * jnp.exp(params["log_scale"][n])).astype(net.thresholds[n].dtype) for n in names}
  off = {n: (net.offsets[n] + params["offset"][n]).astype(net.offsets[n].dtype) for n in names}
  pot = {n: (net.initial_potential[n] + params["potential"][n]).astype(net.initial_potential[n].dtype) for n in names}
  return net.replace(thresholds={**net.thresholds, **th}, offsets=off, initial_potential={**net.initial_potential, **pot})


def _tune_loss(params, net, x, mask, target, *, num_steps, block_size, surrogate, tuned):
  del tuned
  trace = simulate(_tuned(params, net), x, num_steps, block_size=block_size, tallies=False, surrogate=surrogate)
  err = jnp.square(trace.outputs[-1].astype(jnp.float32) - target).reshape(target.shape[0], -1).mean(axis=1)
  return jnp.sum(jnp.where(mask > 0, err, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


_STATIC = ("num_steps", "block_size", "surrogate", "tuned")
_tune_loss_jit = jit(_tune_loss, static_argnames=_STATIC)


@functools.partial(jit, static_argnames=_STATIC)
def _tune_update(params, state, net, learning_rate, x, mask, target, **settings):
  """One Adam update of tune_snn: compiled once per network program, T, schedule and surrogate (the network's arrays
  and the learning rate are data)."""
  value, grads = jax.value_and_grad(_tune_loss)(params, net, x, mask, target, **settings)
  grads = {k: jax.tree_util.tree_map(lambda g, on=k in settings["tuned"]: g * on, v) for k, v in grads.items()}
  updates, state = optax.adam(learning_rate).update(grads, state, params)
  return optax.apply_updates(params, updates), state, value


def tune_snn(snn: SpikingNetwork, batches: Iterable[Any], num_steps: int, *, iterations: int = 200,
             learning_rate: float = 0.01, tune=TUNABLE, surrogate: surrogates.Surrogate = DEFAULT_SURROGATE,
             block_size: int | None = None, progress: bool = False, checkpoint=None, checkpoint_every: int | None = None,
             mesh=None, input_key: str = "image") -> tuple[SpikingNetwork, Report]:
  """End-to-end tuning of per-channel thresholds, offsets and initial potentials through the simulated SNN.

  The loss is the mean squared distance between the SNN's readout after ``num_steps`` (over steps ``d + 1 ..
  num_steps`` when the network has a readout delay ``d``) and the ANN's logits on training batches; its gradient
  flows through :func:`jaxsnn.simulate` with ``surrogate`` on every firing decision (the forward spikes are exactly
  the network's). Per channel (last axis) of every site: a log-scale of the thresholds, a current offset and an
  initial potential (fraction of the threshold), from the network's own values, descended with Adam. Weights never
  change. The iterate with the lowest loss averaged over a round of the batches is returned.

  Args:
    snn: a converted network (e.g. after :func:`calibrate_snn`).
    batches: a few training batches in any form of the batch protocol (labels are not read); kept in memory and
      used in turn, one per iteration. Never the test set.
    num_steps: the T to tune for.
    iterations: Adam's updates.
    learning_rate: Adam's rate.
    tune: which of ``"thresholds"``, ``"offsets"``, ``"initial_potential"`` to tune.
    surrogate: the firing decisions' surrogate derivative (default: the derivative of a sigmoid of sharpness 2 in
      units of the threshold).
    block_size: the simulation schedule.
    progress: a tqdm bar.
    checkpoint: a file path: the tuning state (iteration, Adam's state, the iterate, the best one so far and the
      losses) is written there atomically every ``checkpoint_every`` iterations and at the end; a call with the same
      network, batches and settings resumes from it and returns exactly what an uninterrupted call returns. A checkpoint
      of another job raises. The caller deletes it when done with it.
    checkpoint_every: iterations between checkpoint writes; None (the default): once a minute of work.
    mesh: a ``jax.sharding.Mesh`` to shard every batch over (its ``"batch"`` axis), the parameters replicated;
      default all local devices. A gradient is a sum over the batch: on several devices it is added in another order,
      so the result equals one device's to float rounding, not bit for bit (a resumed run still equals an
      uninterrupted one on the same devices).
    input_key: the input's key in dict batches.

  Returns:
    ``(snn, report)``: the tuned network and a :class:`jaxsnn.Report` whose ``details["losses"]`` is the loss at
    every iteration.

  Raises:
    ValueError: for unknown names in ``tune``, empty batches, a bad ``checkpoint_every``, or a checkpoint of another
      job.
  """
  caller = "jaxsnn.tune_snn"
  t0 = time.perf_counter()
  check_snn(snn, caller)
  num_steps = checks.num_steps(num_steps, caller)
  iterations = checks.iterations(iterations, caller)
  unknown = set(tune) - set(TUNABLE)
  if unknown:
    raise ValueError(f"{caller}: cannot tune {sorted(unknown)}; choose among {', '.join(TUNABLE)}.")
  surrogates.fire(surrogate)  # validates it
  checkpoint_every = checks.checkpoint_every(checkpoint_every, caller)
  prepared = runner.as_given(batches, caller=caller, input_key=input_key,
                             finite="tuning fits the SNN to its ANN on training inputs")
  for p in prepared:
    check_batch(snn, p.x, caller)
  mesh = parallel.batch_mesh(mesh, caller)
  data = [parallel.shard_batch(mesh, p.x, jnp.asarray(p.mask, jnp.float32),
                               ir.ann_outputs(snn.traced, snn.variables, p.x)[1].astype(jnp.float32))
          for p in prepared]
  names = snn.site_names
  channels = {n: (_channels(dict(snn.site_shapes)[n]),) for n in names}
  params = {"log_scale": {n: jnp.zeros(channels[n]) for n in names},
            "offset": {n: jnp.zeros(channels[n]) for n in names},
            "potential": {n: jnp.zeros(channels[n]) for n in names}}
  mask_grads = {"log_scale": "thresholds" in tune, "offset": "offsets" in tune, "potential": "initial_potential" in tune}
  settings = dict(num_steps=num_steps, block_size=block_size, surrogate=surrogate,
                  tuned=tuple(sorted(k for k, v in mask_grads.items() if v)))
  rate = jnp.asarray(learning_rate, jnp.float32)
  net, params = parallel.replicate(mesh, snn), parallel.replicate(mesh, params)
  update = lambda params, state, *d: _tune_update(params, state, net, rate, *d, **settings)  # noqa: E731

  job = None
  if checkpoint is not None:
    job = fingerprint(caller, snn.traced.key, snn.neuron.name, snn.readout, num_steps, iterations, float(learning_rate),
                      sorted(mask_grads.items()), surrogate, block_size,
                      arrays=(snn.variables, snn.thresholds, snn.initial_potential, snn.offsets, snn.readout_delay,
                              data))
  # The starting point is a candidate too: its loss over one round of the batches.
  start = lambda params: -float(np.mean([float(_tune_loss_jit(params, net, *d, **settings)) for d in data]))  # noqa: E731
  result = loop.optimize(update, params, optax.adam(learning_rate).init(params), data, iterations, caller=caller,
                         prepare=lambda d: d, score=start, select="loss", round_size=len(data), progress=progress,
                         desc=f"tune_snn T={num_steps}", checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                         fingerprint=job, differs="other network data, batches, T or settings")
  tuned = _tuned(_off_mesh(mesh, result["params"]), snn)
  report = Report("tune_snn", {"tuned": tuple(t for t in TUNABLE if t in tune), "iterations": iterations,
                               "best_loss": -result["best_score"]}, examples=sum(p.count for p in prepared),
                  num_steps=num_steps, details={"losses": result["losses"]}, seconds=time.perf_counter() - t0)
  return tuned, report


LOSSES = ("labels", "ann")


def _variables(params, fixed, treedef, trained):
  """The network's variables from the trained (floating-point) leaves and the fixed ones."""
  p, f = iter(params), iter(fixed)
  return jax.tree_util.tree_unflatten(treedef, [next(p) if t else next(f) for t in trained])


def _finetune_objective(params, fixed, net, x, labels, mask, *, treedef, trained, num_steps, loss, surrogate, remat):
  tuned = net.replace(variables=_variables(params, fixed, treedef, trained))
  out = simulate(tuned, x, num_steps, surrogate=surrogate, remat=remat, tallies=False).outputs[-1]
  out = out.astype(jnp.float32).reshape(mask.shape[0], -1)
  if loss == "labels":
    per = optax.softmax_cross_entropy_with_integer_labels(out, labels)
  else:  # the original network's ANN logits
    target = ir.ann_pass(net.traced, net.variables, x)[1].astype(jnp.float32).reshape(mask.shape[0], -1)
    per = jnp.square(out - target).mean(axis=1)
  return jnp.sum(jnp.where(mask > 0, per, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


@functools.partial(jit, static_argnames=("optimizer", "treedef", "trained", "num_steps", "loss", "surrogate",
                                             "remat"))
def _finetune_update(params, state, fixed, net, learning_rate, x, labels, mask, *, optimizer, **settings):
  """One optimiser update of finetune: compiled once per network program, T, loss, surrogate and optimizer (the
  network's arrays and the default optimizer's learning rate are data)."""
  value, grads = jax.value_and_grad(_finetune_objective)(params, fixed, net, x, labels, mask, **settings)
  updates, state = (optax.adam(learning_rate) if optimizer is None else optimizer).update(grads, state, params)
  return optax.apply_updates(params, updates), state, value


def finetune(snn: SpikingNetwork, batches: Iterable[Any], num_steps: int, *, iterations: int,
             optimizer: optax.GradientTransformation | None = None, learning_rate: float = 1e-4,
             loss: str = "labels", surrogate: surrogates.Surrogate = DEFAULT_SURROGATE, remat: bool = True,
             validation: Iterable[Any] | None = None, validate_every: int = 100, progress: bool = False,
             checkpoint=None, checkpoint_every: int | None = None, mesh=None,
             input_key: str = "image") -> tuple[SpikingNetwork, Report]:
  """Fine-tunes the network's weights through the simulated SNN at T steps (surrogate gradients).

  The loss is computed on the SNN's readout after ``num_steps`` (the answer the network gives, readout delay
  included): the cross-entropy with the labels (``loss="labels"``), or the mean squared distance to the original
  ANN's logits (``loss="ann"``, no labels read). Its gradient flows through :func:`jaxsnn.simulate` with
  ``surrogate`` on every firing decision; the forward spikes are the network's own. Every floating-point leaf of
  ``snn.variables`` is trained (weights, biases, BatchNorm's parameters and statistics, which in eval mode are one more
  affine map); thresholds, potentials, offsets and the readout delay stay as they are.

  Args:
    snn: a converted network, e.g. from :func:`jaxsnn.recipes.low_latency` at ``num_steps``.
    batches: training batches (any form of the batch protocol; labelled for ``loss="labels"``), one per iteration,
      cycled in epochs until ``iterations`` updates are made: :func:`jaxsnn.data.epochs` gives each epoch's own
      shuffle and augmentations (and a resumed run only the batches it has not used), a list or another re-iterable is
      iterated again every epoch, a one-shot iterator is read once and its batches replayed. Never the test set.
    num_steps: the T to fine-tune for.
    iterations: the optimiser's updates.
    optimizer: an optax transformation (default ``optax.adam(learning_rate)``).
    learning_rate: the default optimizer's rate.
    loss: ``"labels"`` or ``"ann"``.
    surrogate: the firing decisions' surrogate derivative.
    remat: recompute each step's activations in the backward pass (:func:`jaxsnn.simulate`'s ``remat``): less memory.
    validation: labelled held-out batches (training images never trained on; never the test set): the accuracy at
      ``num_steps`` is measured on them every ``validate_every`` iterations and at the end, and the variables with the
      best one are returned (the starting point is a candidate too). A one-shot iterator is read once and kept. None:
      the last variables.
    validate_every: iterations between validations.
    progress: tqdm bars.
    checkpoint: a file path: the state (iteration, optimizer state, variables, the best so far, the history) is
      written atomically every ``checkpoint_every`` iterations, at the end and before a non-finite loss stops the run; a
      call with the same network, settings and batches resumes from it (skipping the batches already used) and returns
      what an uninterrupted call returns (with an ``optimizer`` of your own, pass the same one again: it is not part of
      the checkpoint's fingerprint).
    checkpoint_every: iterations between checkpoint writes; None (the default): once a minute of work.
    mesh: a ``jax.sharding.Mesh`` to shard every batch over (its ``"batch"`` axis), the parameters replicated;
      default all local devices. A gradient is a sum over the batch: on several devices it is added in another order,
      so the result equals one device's to float rounding, not bit for bit (a resumed run still equals an
      uninterrupted one on the same devices).
    input_key: the input's key in dict batches.

  Returns:
    ``(snn, report)``: the fine-tuned network (new variables, nothing else changed) and a :class:`jaxsnn.Report`
    whose ``details`` hold the loss of every iteration and the validation history ``[(iteration, accuracy), ...]``,
    and whose ``chose["epochs"]`` says over how many epochs of ``batches`` the iterations ran.

  Raises:
    ValueError: for a bad loss or iteration count, batches without labels for ``loss="labels"`` or with labels outside
      ``[0, classes)``, empty batches or validation, or a checkpoint of another job.
    jaxsnn.NonFiniteLossError: when the loss becomes NaN or infinite (naming the iteration and the batch; the update
      is not applied, the checkpoint keeps the iteration before, and the error's ``best`` holds the best network so
      far).

  Example:
    >>> snn, report = jaxsnn.recipes.low_latency(apply_fn, variables, train_batches, num_steps=8)
    >>> snn, report = jaxsnn.finetune(snn, train_batches, 8, iterations=1000, validation=val_batches)
  """
  caller = "jaxsnn.finetune"
  t0 = time.perf_counter()
  check_snn(snn, caller)
  num_steps = checks.num_steps(num_steps, caller)
  if loss not in LOSSES:
    raise ValueError(f"{caller}: loss must be one of {LOSSES}; got {loss!r}.")
  iterations = checks.iterations(iterations, caller)
  validate_every = checks.positive_int(validate_every, "validate_every", caller)
  checkpoint_every = checks.checkpoint_every(checkpoint_every, caller)
  surrogates.fire(surrogate)
  classes = checks.classes(snn.output_shape, caller)
  check_batches(batches, caller)
  if validation is not None:
    validation = runner.labelled_once(validation, f"{caller}: validation", input_key, classes)
  # A given optimizer's settings are not readable from it: a resumed run must pass the same one (the caller's part).
  optimizer_key = ("adam", float(learning_rate)) if optimizer is None else "the caller's optimizer"
  leaves, treedef = jax.tree_util.tree_flatten(snn.variables)
  trained = tuple(bool(jnp.issubdtype(jnp.result_type(leaf), jnp.floating)) for leaf in leaves)
  params = [leaf for leaf, t in zip(leaves, trained) if t]
  fixed = [leaf for leaf, t in zip(leaves, trained) if not t]
  settings = dict(treedef=treedef, trained=trained, num_steps=num_steps, loss=loss, surrogate=surrogate, remat=remat)
  rate = jnp.asarray(learning_rate, jnp.float32)
  mesh = parallel.batch_mesh(mesh, caller)
  net, params, fixed = parallel.replicate(mesh, snn), parallel.replicate(mesh, params), parallel.replicate(mesh, fixed)
  update = lambda params, state, *batch: _finetune_update(  # noqa: E731
      params, state, fixed, net, rate, *batch, optimizer=optimizer, **settings)
  variables_of = lambda params: _variables(params, fixed, treedef, trained)  # noqa: E731

  seen = {"examples": 0}

  def prepare(item):
    batch = as_batch(item, caller, input_key)
    if loss == "labels":
      if batch.labels is None:
        raise ValueError(f"{caller}: loss='labels' needs labelled batches; a batch has none (pass (x, labels) "
                         "batches, or use loss='ann').")
      runner.check_labels(batch.labels[batch.mask], classes, caller)
    check_batch(snn, batch.x, caller)
    if batch.count == 0:
      raise ValueError(f"{caller}: a batch has no real example (every row is masked out); an update on it would train "
                       "on nothing.")
    seen["examples"] += batch.count
    labels = batch.labels if batch.labels is not None else np.zeros(batch.size, np.int32)
    return parallel.shard_batch(mesh, batch.x, np.asarray(labels, np.int32), np.asarray(batch.mask, np.float32))

  def accuracy(params):
    return float(evaluate(snn.replace(variables=variables_of(params)), validation, num_steps,
                          input_key=input_key).accuracy[-1])

  job = None
  if checkpoint is not None:
    job = fingerprint(caller, snn.traced.key, snn.neuron.name, num_steps, iterations, optimizer_key, loss, surrogate,
                      remat, validation is not None, validate_every,
                      arrays=(snn.variables, snn.thresholds, snn.initial_potential, snn.offsets, snn.readout_delay))
  try:
    start = (optax.adam(learning_rate) if optimizer is None else optimizer).init(params)
    result = loop.optimize(update, params, start, batches, iterations, caller=caller, prepare=prepare,
                           score=accuracy if validation is not None else None, score_every=validate_every,
                           progress=progress, desc=f"finetune T={num_steps}", checkpoint=checkpoint,
                           checkpoint_every=checkpoint_every, fingerprint=job,
                           differs="other network data, settings or optimizer")
  except loop.NonFiniteLossError as e:
    e.best = snn.replace(variables=variables_of(e.best))
    raise
  report = Report("finetune", {"loss": loss, "iterations": iterations, "epochs": result["epochs"] if iterations else 0,
                               "trained_leaves": len(params),
                               "best_validation_accuracy": result["best_score"] if validation is not None else None},
                  examples=seen["examples"], num_steps=num_steps,
                  details={"losses": result["losses"], "validation": result["history"]},
                  seconds=time.perf_counter() - t0)
  return snn.replace(variables=variables_of(_off_mesh(mesh, result["params"]))), report
