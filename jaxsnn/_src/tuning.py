"""End-to-end tuning of per-channel thresholds, offsets and initial potentials through the simulated SNN, with the
neuron's own surrogate gradient (:mod:`jaxsnn.surrogates`): the forward spikes are the network's, exactly."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsnn._src import ir, runner, surrogates
from jaxsnn._src.convert import SpikingNetwork
from jaxsnn._src.files import fingerprint, load_checkpoint, save_checkpoint
from jaxsnn._src.reports import Report
from jaxsnn._src.simulate import simulate
from jaxsnn._src.snn_calibration import check_steps

TUNABLE = ("thresholds", "offsets", "initial_potential")
DEFAULT_SURROGATE = surrogates.sigmoid(2.0)


def _channels(shape) -> int:
  return int(shape[-1]) if len(shape) else 1


def tune_snn(snn: SpikingNetwork, batches: Iterable[Any], num_steps: int, *, steps: int = 200,
             learning_rate: float = 0.01, tune=TUNABLE, surrogate: surrogates.Surrogate = DEFAULT_SURROGATE,
             block_size: int | None = None, progress: bool = False, checkpoint=None, checkpoint_every: int = 10,
             input_key: str = "image") -> tuple[SpikingNetwork, Report]:
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
      used in turn, one per step. Never the test set.
    num_steps: the T to tune for.
    steps: gradient steps.
    learning_rate: Adam's rate.
    tune: which of ``"thresholds"``, ``"offsets"``, ``"initial_potential"`` to tune.
    surrogate: the firing decisions' surrogate derivative (default: the derivative of a sigmoid of sharpness 2 in
      units of the threshold).
    block_size: the simulation schedule.
    progress: a tqdm bar.
    checkpoint: a file path: the tuning state (step, Adam's state, the iterate, the best one so far and the losses)
      is written there atomically every ``checkpoint_every`` steps and at the end; a call with the same network,
      batches and settings resumes from it and returns exactly what an uninterrupted call returns. A checkpoint of
      another job raises. The caller deletes it when done with it.
    checkpoint_every: steps between checkpoint writes.
    input_key: the input's key in dict batches.

  Returns:
    ``(snn, report)``: the tuned network and a :class:`jaxsnn.Report` whose ``details["losses"]`` is the loss at
    every step.

  Raises:
    ValueError: for unknown names in ``tune``, empty batches, a bad ``checkpoint_every``, or a checkpoint of another
      job.
  """
  caller = "jaxsnn.tune_snn"
  t0 = time.perf_counter()
  num_steps = check_steps(num_steps, caller)
  unknown = set(tune) - set(TUNABLE)
  if unknown:
    raise ValueError(f"{caller}: cannot tune {sorted(unknown)}; choose among {', '.join(TUNABLE)}.")
  surrogates.fire(surrogate)  # validates it
  if checkpoint is not None and (isinstance(checkpoint_every, bool) or
                                 not isinstance(checkpoint_every, (int, np.integer)) or checkpoint_every < 1):
    raise ValueError(f"{caller}: checkpoint_every must be a positive integer, got {checkpoint_every!r}.")
  prepared = runner.collect(batches, caller=caller, input_key=input_key)
  data = [(p.x, jnp.asarray(p.mask, jnp.float32), ir.ann_outputs(snn.traced, snn.variables, p.x)[1].astype(jnp.float32))
          for p in prepared]
  names = snn.site_names
  channels = {n: (_channels(dict(snn.site_shapes)[n]),) for n in names}
  params = {"log_scale": {n: jnp.zeros(channels[n]) for n in names},
            "offset": {n: jnp.zeros(channels[n]) for n in names},
            "potential": {n: jnp.zeros(channels[n]) for n in names}}
  opt = optax.adam(learning_rate)
  state = opt.init(params)
  mask_grads = {"log_scale": "thresholds" in tune, "offset": "offsets" in tune, "potential": "initial_potential" in tune}

  def apply(params, net):
    th = {n: (net.thresholds[n] * jnp.exp(params["log_scale"][n])).astype(net.thresholds[n].dtype) for n in names}
    off = {n: (net.offsets[n] + params["offset"][n]).astype(net.offsets[n].dtype) for n in names}
    pot = {n: (net.initial_potential[n] + params["potential"][n]).astype(net.initial_potential[n].dtype)
           for n in names}
    return net.replace(thresholds={**net.thresholds, **th}, offsets=off,
                       initial_potential={**net.initial_potential, **pot})

  def loss(params, x, mask, target):
    trace = simulate(apply(params, snn), x, num_steps, block_size, tallies=False, surrogate=surrogate)
    err = jnp.square(trace.outputs[-1].astype(jnp.float32) - target).reshape(target.shape[0], -1).mean(axis=1)
    return jnp.sum(err * mask) / jnp.maximum(jnp.sum(mask), 1)

  grad_fn = jax.jit(jax.value_and_grad(loss))
  job, resumed = None, None
  if checkpoint is not None:
    job = fingerprint(caller, snn.traced.key, snn.neuron.name, snn.readout, num_steps, steps, float(learning_rate),
                      sorted(mask_grads.items()), surrogate, block_size,
                      arrays=(snn.variables, snn.thresholds, snn.initial_potential, snn.offsets, snn.readout_delay,
                              data))
    saved = load_checkpoint(checkpoint, job, caller, "other network data, batches, T or settings")
    if saved is not None:
      treedef = jax.tree_util.tree_structure((params, state, params))
      like = jax.tree_util.tree_leaves((params, state, params))
      leaves = [jnp.asarray(v, jnp.asarray(l).dtype) for v, l in zip(saved["leaves"], like)]
      resumed = (int(saved["step"]), jax.tree_util.tree_unflatten(treedef, leaves), float(saved["best_loss"]),
                 [float(v) for v in saved["losses"]])
  if resumed is not None:
    start, (params, state, best), best_loss, losses = resumed
  else:
    # The starting point is a candidate too: its loss over one round of the batches.
    start, best, losses = 0, params, []
    best_loss = float(np.mean([float(grad_fn(params, *d)[0]) for d in data]))
  bar = runner.progress_bar(progress, f"tune_snn T={num_steps}", unit="step", total=steps, initial=start)
  for i in range(start, steps):
    x, mask, target = data[i % len(data)]
    value, grads = grad_fn(params, x, mask, target)
    grads = {k: jax.tree_util.tree_map(lambda g: g * mask_grads[k], v) for k, v in grads.items()}
    value = float(value)
    losses.append(value)
    # The mean loss over the last round of batches (iterates a few small steps apart) stands for this iterate's.
    if i >= len(data) and np.mean(losses[-len(data):]) < best_loss:
      best_loss, best = float(np.mean(losses[-len(data):])), params
    updates, state = opt.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    if bar is not None:
      bar.update(1)
      bar.set_postfix(loss=f"{value:.4g}")
    if checkpoint is not None and ((i + 1) % checkpoint_every == 0 or i + 1 == steps):
      save_checkpoint(checkpoint, job, {"step": i + 1, "leaves": jax.tree_util.tree_leaves((params, state, best)),
                                        "best_loss": best_loss, "losses": np.asarray(losses, np.float64)})
  if bar is not None:
    bar.close()
  tuned = apply(best, snn)
  report = Report("tune_snn", {"tuned": tuple(t for t in TUNABLE if t in tune), "steps": steps,
                               "best_loss": best_loss}, examples=sum(p.count for p in prepared), num_steps=num_steps,
                  details={"losses": np.asarray(losses)}, seconds=time.perf_counter() - t0)
  return tuned, report
