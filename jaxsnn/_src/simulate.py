"""Simulation of a converted network: the only place that scans over time.

Time convention: time-major, ``[num_steps, batch, ...]``, step ``t`` (1-based) is index ``t - 1``.

Two schedules from the same program:

* step-major (``block_size=None``): ``lax.scan`` over steps, each step runs the whole network once;
* time-blocked layer-major (``block_size=K``): for each block of K steps, each op runs once on the K steps (``vmap``
  over the block axis, which XLA folds into the batch), each neuron site scans its K steps elementwise; the state is
  carried across blocks. Memory grows with K.

They give bit-identical spikes and readouts (``exact=True``, the default). XLA's matmul and convolution kernels pick
their blocking, and so their summation order, from the operand shapes: the same rows can round differently in a batch
of N and in a batch of K*N (measured on XLA:CPU: differences of 1e-7..1e-5). So with ``exact=True`` the layer-major
schedule runs those contractions once per step of the block (``lax.map``, the step-major kernel) and batches everything
else; ``exact=False`` batches the contractions too, for speed where that pays, equal only up to float rounding.

Per-site data of the network (thresholds, initial potentials, current offsets) are leaves of the
:class:`SpikingNetwork` pytree: changing them never recompiles. A sample whose input holds a NaN or an infinity reads
out NaN at every step (as its ANN would), never a confident answer.

Max of spiking values (max pooling, ``jnp.maximum(a, b)``) uses the **cumulative-max rule**: the site keeps the
cumulative sum ``C_t`` of its inputs and emits ``g(C_t) - g(C_{t-1})`` where ``g`` is the ANN's max operation. The sum
of its outputs up to t is ``g(C_t) = t * g(mean input)`` (max is positively homogeneous), so its average equals the max
of the average inputs exactly, at every t.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsnn._src import ir, rules
from jaxsnn._src.convert import SpikingNetwork, check_input
from jaxsnn._src.ir import OUTPUT


class Trace(NamedTuple):
  """What one simulation run records.

  Attributes:
    outputs: ``[num_steps, batch, *output_shape]``: the readout averaged over steps 1..t, for every t (so
      ``outputs[t - 1]`` is the network's answer after t steps).
    pos_spikes: ``{site: int32 [batch, *site_shape]}``: positive spikes per neuron over the whole run
      (``readout="spike"`` adds ``"output"``).
    neg_spikes: same for negative spikes.
  """

  outputs: Any
  pos_spikes: dict
  neg_spikes: dict

  @property
  def num_steps(self) -> int:
    return self.outputs.shape[0]


def _positive_int(value, name, caller):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{caller}: {name} must be a positive int; got {value!r} of type {type(value).__name__}.")
  if value <= 0:
    raise ValueError(f"{caller}: {name} must be >= 1; got {value}.")
  return int(value)


def simulate(snn: SpikingNetwork, x: Any, num_steps: int, block_size: int | None = None, *,
             exact: bool = True) -> Trace:
  """Simulates ``snn`` on input ``x`` (a constant analog current every step) for ``num_steps`` steps.

  Args:
    snn: a converted network (:func:`jaxsnn.convert`).
    x: an input batch with the converted per-sample shape and dtype (any batch size).
    num_steps: number of time steps T >= 1.
    block_size: None for the step-major schedule, or K >= 1 for the time-blocked layer-major schedule (any T; the
      last block is shorter when K does not divide T).
    exact: only for ``block_size``. True (default): the layer-major schedule is bit-identical to the step-major one
      (same spikes, same readout): matmuls and convolutions run once per step of the block with the step-major
      kernel, every other op runs once on the whole block. False: matmuls and convolutions also run once on the K
      steps stacked into the batch, which is faster where batching pays (small batches, accelerators) but lets XLA
      pick kernels whose summation order differs, so readouts agree only to float rounding and a neuron sitting
      exactly at its threshold may fire one step apart.

  Returns:
    A :class:`Trace`; ``trace.outputs[t - 1]`` is the readout averaged over steps 1..t (NaN for a sample whose
    input is not finite).

  Raises:
    ValueError: for num_steps or block_size that are not positive ints, or an input that does not match the network.

  Example:
    >>> trace = jaxsnn.simulate(snn, x_test, num_steps=256, block_size=64)
    >>> acc = jaxsnn.accuracy_vs_time(trace, y_test)   # accuracy after every t = 1..256
  """
  caller = "jaxsnn.simulate"
  if not isinstance(snn, SpikingNetwork):
    raise ValueError(f"{caller}: snn must be a SpikingNetwork from jaxsnn.convert; got {type(snn).__name__}.")
  num_steps = _positive_int(num_steps, "num_steps", caller)
  if block_size is not None:
    block_size = min(_positive_int(block_size, "block_size", caller), num_steps)
  check_input(snn, x, caller)
  return _simulate(snn, x, num_steps, block_size, bool(exact))


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _simulate(snn: SpikingNetwork, x, num_steps: int, block: int | None, exact: bool) -> Trace:
  program = ir.build_program(snn.apply_fn, snn.variables, x, caller="jaxsnn.simulate")
  env = ir.initial_env(program, snn.variables, x)
  ir.walk(program, env, kinds=frozenset({ir.CONST, ir.INPUT}))  # sites are spiking: never run here
  static_env = env
  neuron, th, state_dtype = snn.neuron, snn.thresholds, snn.state_dtype
  spiking = lambda a: program.kind(a) == ir.SPIKE  # noqa: E731

  def initial_state(name, aval):
    v0 = snn.initial_potential[name].astype(state_dtype) * th[name].astype(state_dtype)
    return neuron.init(aval.shape, state_dtype, jnp.broadcast_to(v0, aval.shape))

  # Initial state.
  neurons = {s.name: initial_state(s.name, program.avals[s.x]) for s in program.sites}
  maxes = {}
  for m in program.max_sites:
    cum = [jnp.zeros(program.avals[a].shape, program.avals[a].dtype) for a in m.op.ins]
    maxes[m.name] = (cum, m.op.bind(*cum)[0])
  out_aval = program.aval(program.out)
  acc = jnp.zeros(out_aval.shape, state_dtype)
  zeros = {s.name: jnp.zeros(program.avals[s.x].shape, jnp.int32) for s in program.sites}
  if snn.readout == "spike":
    neurons[OUTPUT] = initial_state(OUTPUT, out_aval)
    zeros[OUTPUT] = jnp.zeros(out_aval.shape, jnp.int32)
  carry = (neurons, maxes, acc, zeros, zeros)

  def count(s, axis=None):
    pos, neg = (s > 0).astype(jnp.int32), (s < 0).astype(jnp.int32)
    return (pos, neg) if axis is None else (pos.sum(axis), neg.sum(axis))

  def run(carry, k: int | None):
    """Runs k steps layer-major (spiking values carry a leading k axis), or one step if k is None."""
    neurons, maxes, acc, pos, neg = carry
    neurons, maxes, pos, neg = dict(neurons), dict(maxes), dict(pos), dict(neg)
    env = dict(static_env)

    def neuron_steps(threshold, state, z, name):
      if k is None:
        state, s = neuron.step(threshold, state, z)
        p, n = count(s)
      else:
        state, s = jax.lax.scan(lambda st, zk: neuron.step(threshold, st, zk), state, z)
        p, n = count(s, axis=0)
      pos[name], neg[name] = pos[name] + p, neg[name] + n
      return state, s

    def site_rule(site, args):
      z = args[0] + snn.offsets[site.name]
      if k is not None and not spiking(site.x):  # the first layer's current: constant, same for every step
        z = jnp.broadcast_to(z, (k,) + z.shape)
      neurons[site.name], s = neuron_steps(th[site.name], neurons[site.name], z, site.name)
      return s

    def max_rule(msite, args):
      spiking_max = lambda st, a: _cummax_step(msite.op, st, a)  # noqa: E731
      if k is None:
        maxes[msite.name], y = spiking_max(maxes[msite.name], args)
      else:
        maxes[msite.name], y = jax.lax.scan(spiking_max, maxes[msite.name], args)
      return y

    def op_rule(op, args):
      if k is None:
        return op.bind(*args)
      axes = [0 if spiking(a) else None for a in op.ins]
      fixed = [None if ax == 0 else v for v, ax in zip(args, axes)]
      moving = tuple(v for v, ax in zip(args, axes) if ax == 0)

      def one(moving):
        it = iter(moving)
        return op.bind(*[next(it) if ax == 0 else f for f, ax in zip(fixed, axes)])

      if exact and rules.is_contraction(op.prim):
        return jax.lax.map(one, moving)  # the step-major kernel, once per step of the block
      return jax.vmap(one)(moving)

    ir.walk(program, env, kinds=frozenset({ir.SPIKE}), op_rule=op_rule, site_rule=site_rule, max_rule=max_rule)
    z = ir.read(env, program.out)
    if k is not None and not spiking(program.out):
      z = jnp.broadcast_to(z, (k,) + z.shape)
    if snn.readout == "spike":
      neurons[OUTPUT], z = neuron_steps(th[OUTPUT], neurons[OUTPUT], z, OUTPUT)
    z = z.astype(state_dtype)
    if k is None:
      acc = acc + z
      accs = acc
    else:
      acc, accs = jax.lax.scan(lambda a, zk: (a + zk, a + zk), acc, z)
    return (neurons, maxes, acc, pos, neg), accs

  if block is None:
    carry, accs = jax.lax.scan(lambda c, _: run(c, None), carry, None, length=num_steps)
  else:
    n_full, rest = divmod(num_steps, block)
    carry, accs = jax.lax.scan(lambda c, _: run(c, block), carry, None, length=n_full)
    accs = accs.reshape((n_full * block,) + accs.shape[2:])
    if rest:
      carry, tail = run(carry, rest)
      accs = jnp.concatenate([accs, tail], axis=0)
  t = jnp.arange(1, num_steps + 1, dtype=accs.dtype).reshape((num_steps,) + (1,) * (accs.ndim - 1))
  outputs = accs / t
  # A sample whose input holds a NaN or an infinity reads out NaN at every step, as its ANN would: no neuron can
  # fire on a NaN current, and the readout would otherwise be a confident answer made of the biases alone.
  finite = _finite_samples(x)
  outputs = jnp.where(finite.reshape((1, -1) + (1,) * (outputs.ndim - 2)), outputs, jnp.nan)
  _, _, _, pos, neg = carry
  return Trace(outputs=outputs, pos_spikes=pos, neg_spikes=neg)


def _finite_samples(x) -> jax.Array:
  """``[batch]`` bool: every value of the sample's input is finite."""
  ok = None
  for leaf in jax.tree_util.tree_leaves(x):
    if not jnp.issubdtype(leaf.dtype, jnp.inexact):
      continue
    f = jnp.isfinite(leaf).reshape(leaf.shape[0], -1).all(axis=1)
    ok = f if ok is None else ok & f
  if ok is None:
    ok = jnp.ones(jax.tree_util.tree_leaves(x)[0].shape[0], bool)
  return ok


def _cummax_step(op: ir.Op, state, args):
  cum, previous = state
  cum = [c + a for c, a in zip(cum, args)]
  current = op.bind(*cum)[0]
  return (cum, current), current - previous


def accuracy_vs_time(trace: Trace, labels: Any) -> jax.Array:
  """Top-1 accuracy after every number of steps t = 1..T, from one run.

  Args:
    trace: a :class:`Trace` whose outputs are ``[T, batch, classes]``.
    labels: integer labels ``[batch]`` or one-hot ``[batch, classes]``.

  Returns:
    ``[T]`` float array: the fraction of correct predictions after t steps.

  Raises:
    ValueError: if the labels do not match the outputs' batch or classes.
  """
  out = trace.outputs
  labels = jnp.asarray(labels)
  if out.ndim != 3:
    raise ValueError(f"jaxsnn.accuracy_vs_time: outputs must be [T, batch, classes]; got shape {out.shape}.")
  if labels.ndim == 2:
    if labels.shape != out.shape[1:]:
      raise ValueError(f"jaxsnn.accuracy_vs_time: one-hot labels of shape {labels.shape} do not match outputs "
                       f"[batch, classes] = {out.shape[1:]}.")
    labels = labels.argmax(-1)
  if labels.shape != out.shape[1:2]:
    raise ValueError(f"jaxsnn.accuracy_vs_time: labels of shape {labels.shape} do not match the batch size "
                     f"{out.shape[1]}.")
  return (out.argmax(-1) == labels[None]).mean(axis=1)


def evaluate(snn: SpikingNetwork, batches: Any, num_steps: int, block_size: int | None = None, *,
             exact: bool = True, progress: bool = False) -> dict:
  """Accuracy after every t = 1..T over a whole dataset, streamed batch by batch.

  Args:
    snn: a converted network.
    batches: an iterable of ``(x, labels)`` or ``(x, labels, mask)`` (``mask`` marks real examples in a padded last
      batch), labels as ints.
    num_steps: time steps T.
    block_size: schedule, as in :func:`simulate`.
    exact: as in :func:`simulate`.
    progress: show a tqdm progress bar (images per second) if tqdm is installed.

  Returns:
    ``{"accuracy": float64 [T], "correct": int64 [T], "count": int, "pos_spikes": {site: total},
    "neg_spikes": {site: total}, "non_finite": int}``: the accuracy after t steps is ``accuracy[t - 1]``; spike
    totals are summed over examples, neurons and steps (for firing rates: divide by count, neurons and T).
    ``non_finite`` counts the examples whose input held a NaN or an infinity: their readout is NaN (see
    :func:`simulate`), they count as wrong, and a warning says how many there were.

  Raises:
    ValueError: for an empty iterable or a bad batch (see :func:`simulate`).
  """
  bar = None
  if progress:
    try:
      from tqdm.auto import tqdm
      bar = tqdm(unit="img", desc=f"SNN T={num_steps}")
    except ImportError:  # progress is a nicety, not a dependency
      bar = None
  correct = np.zeros(num_steps, np.int64)
  count = 0
  pos_total: dict = {}
  neg_total: dict = {}
  non_finite = 0
  for batch in batches:
    x, labels, *rest = batch
    mask = np.asarray(rest[0], bool) if rest else np.ones(np.shape(labels)[0], bool)
    trace = simulate(snn, x, num_steps, block_size, exact=exact)
    finite = np.asarray(_finite_samples(x))
    hits = np.asarray(trace.outputs.argmax(-1) == jnp.asarray(labels)[None]) & finite[None]  # [T, B]
    non_finite += int((~finite & mask).sum())
    correct += hits[:, mask].sum(axis=1)
    count += int(mask.sum())
    for totals, spikes in ((pos_total, trace.pos_spikes), (neg_total, trace.neg_spikes)):
      for site, c in spikes.items():
        totals[site] = totals.get(site, 0) + int(np.asarray(c)[mask].sum())
    if bar is not None:
      bar.update(int(mask.sum()))
      bar.set_postfix(acc=f"{correct[-1] / max(count, 1):.4f}")
  if bar is not None:
    bar.close()
  if count == 0:
    raise ValueError("jaxsnn.evaluate: batches is empty.")
  if non_finite:
    warnings.warn(f"jaxsnn.evaluate: {non_finite} of {count} examples had a NaN or infinite input; their readout is "
                  "NaN and they count as wrong.", stacklevel=2)
  return {"accuracy": correct / count, "correct": correct, "count": count, "pos_spikes": pos_total,
          "neg_spikes": neg_total, "non_finite": non_finite}
