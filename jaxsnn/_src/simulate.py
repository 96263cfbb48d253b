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
import hashlib
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsnn._src import ir, lowering, parallel, rules
from jaxsnn._src.convert import SpikingNetwork, check_input
from jaxsnn._src.files import atomic_write, load_checkpoint
from jaxsnn._src.ir import OUTPUT


class Trace(NamedTuple):
  """What one simulation run records.

  Attributes:
    outputs: ``[num_steps, batch, *output_shape]``: the readout averaged over steps 1..t (after the first
      ``snn.readout_delay`` steps where t allows), for every t (so ``outputs[t - 1]`` is the answer after t steps).
    pos_spikes: ``{site: int32 [batch, *site_shape]}``: positive spikes per neuron over the whole run
      (``readout="spike"`` adds ``"output"``).
    neg_spikes: same for negative spikes.
    recorded: None, or (``simulate(..., record_steps=...)``) ``{"steps": (t, ...), "pos": {site: int32 [K,
      *site_shape]}, "neg": {...}}``: each neuron's spikes over steps 1..t for every recorded t, summed over the
      batch (weighted by ``sample_weights``): firing rates and SynOps at every recorded T from one run.
  """

  outputs: Any
  pos_spikes: dict
  neg_spikes: dict
  recorded: Any = None

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
             exact: bool = True, record_steps=(), sample_weights=None) -> Trace:
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
    record_steps: steps t at which to record each neuron's spike counts so far, summed over the batch
      (``Trace.recorded``); empty (the default) records nothing.
    sample_weights: ``[batch]`` ints weighting each sample in the recorded sums (0 for the padding of a last
      batch); default all 1.

  Returns:
    A :class:`Trace`; ``trace.outputs[t - 1]`` is the readout averaged over steps 1..t (over steps
    ``min(d, t - 1) + 1 .. t`` with a readout delay ``d = snn.readout_delay``; NaN for a sample whose input is not
    finite).

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
  batch = check_input(snn, x, caller)
  record = tuple(sorted({_positive_int(t, "record_steps entry", caller) for t in record_steps}))
  if record and record[-1] > num_steps:
    raise ValueError(f"{caller}: record_steps {record} go beyond num_steps={num_steps}.")
  weights = jnp.ones(batch, jnp.int32) if sample_weights is None else jnp.asarray(sample_weights, jnp.int32)
  if weights.shape != (batch,):
    raise ValueError(f"{caller}: sample_weights must have shape ({batch},); got {weights.shape}.")
  return _simulate(snn, x, weights, num_steps, block_size, bool(exact), record)


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _simulate(snn: SpikingNetwork, x, weights, num_steps: int, block: int | None, exact: bool,
              record: tuple) -> Trace:
  program = ir.build_program(snn.apply_fn, snn.variables, x, caller="jaxsnn.simulate", fold=snn.fold)
  env = ir.initial_env(program, snn.variables, x)
  ir.walk(program, env, kinds=frozenset({ir.CONST, ir.INPUT}))  # sites are spiking: never run here
  static_env = env
  neuron, th, state_dtype = snn.neuron, snn.thresholds, snn.state_dtype
  spiking = lambda a: program.kind(a) == ir.SPIKE  # noqa: E731
  first = jax.tree_util.tree_leaves(x)[0]
  batch = first.shape[0]
  # Zeros of the batch's sharding: built from the input, so that a batch sharded over a mesh (explicit sharding
  # included) gives every piece of state the same sharding, and the time loop's carry keeps one type.
  batch_zeros = jnp.zeros_like(first.reshape(batch, -1)[:, 0], jnp.int32)

  def zeros(shape, dtype):
    if len(shape) and shape[0] == batch:
      return jnp.broadcast_to(batch_zeros.astype(dtype).reshape((batch,) + (1,) * (len(shape) - 1)), shape)
    return jnp.zeros(shape, dtype)

  # A neuron's own counters (SNM's memory) never exceed num_steps in magnitude: kept in the narrowest int type that
  # holds it, they cost less memory traffic every step.
  cdt = count_dtype(num_steps)

  def initial_state(name, aval):
    v0 = snn.initial_potential[name].astype(state_dtype) * th[name].astype(state_dtype)
    state = neuron.init(aval.shape, state_dtype, v0)
    if neuron.counters:
      state = state._replace(**{f: getattr(state, f).astype(cdt) for f in neuron.counters})
    return jax.tree_util.tree_map(lambda a: a + zeros(a.shape, a.dtype), state)

  # Initial state.
  neurons = {s.name: initial_state(s.name, program.avals[s.x]) for s in program.sites}
  maxes = {}
  for m in program.max_sites:
    cum = [zeros(program.avals[a].shape, program.avals[a].dtype) for a in m.op.ins]
    maxes[m.name] = (cum, m.op.bind(*cum)[0])
  out_aval = program.aval(program.out)
  acc = zeros(out_aval.shape, state_dtype)
  # The Trace's tallies of each neuron's positive and negative spikes are int32 instead: XLA:CPU accumulates (s > 0)
  # into an int8 or int16 carry several times slower (ResNet-20, batch 64, T = 32: 657 / 1,138 / 1,632 images*steps/s
  # with int8 / int16 / int32 tallies, 1,759 without any; benchmarks/RESULTS.md).
  counts = {s.name: zeros(program.avals[s.x].shape, jnp.int32) for s in program.sites}
  shapes = {s.name: program.avals[s.x].shape[1:] for s in program.sites}
  if snn.readout == "spike":
    neurons[OUTPUT] = initial_state(OUTPUT, out_aval)
    counts[OUTPUT] = zeros(out_aval.shape, jnp.int32)
    shapes[OUTPUT] = out_aval.shape[1:]
  recorded = {k: jnp.zeros((len(record),) + shape, jnp.int32) for k, shape in shapes.items()}
  carry = (neurons, maxes, acc, counts, counts, recorded, recorded, jnp.zeros((), jnp.int32))
  record_at = jnp.asarray(record, jnp.int32)

  def count(s, axis=None):
    pos, neg = (s > 0).astype(jnp.int32), (s < 0).astype(jnp.int32)
    return (pos, neg) if axis is None else (pos.sum(axis), neg.sum(axis))

  def batch_sum(c, batch_axis):  # the weighted sum over samples of per-step counts
    w = weights.reshape((1,) * batch_axis + (-1,) + (1,) * (c.ndim - batch_axis - 1))
    return (c * w).sum(axis=batch_axis)

  def run(carry, k: int | None):
    """Runs k steps layer-major (spiking values carry a leading k axis), or one step if k is None."""
    neurons, maxes, acc, pos, neg, rec_pos, rec_neg, t0 = carry  # t0: steps already done
    neurons, maxes, pos, neg = dict(neurons), dict(maxes), dict(pos), dict(neg)
    rec_pos, rec_neg = dict(rec_pos), dict(rec_neg)
    env = dict(static_env)

    def step(threshold, state, z):
      state, s = neuron.step(threshold, state, z)
      changed = [f for f in neuron.counters if getattr(state, f).dtype != cdt]
      if changed:
        raise ValueError(f"jaxsnn.simulate: neuron {neuron.name!r} declares {changed} as counters, so they are kept "
                         f"in {jnp.dtype(cdt).name}, but its step returned them as "
                         f"{[getattr(state, f).dtype.name for f in changed]}: keep the dtype of the state it is given "
                         f"(e.g. `m + pos.astype(m.dtype)`).")
      return state, s

    def neuron_steps(threshold, state, z, name):
      if k is None:
        state, s = step(threshold, state, z)
        p, n = count(s)
      else:
        state, s = jax.lax.scan(lambda st, zk: step(threshold, st, zk), state, z)
        p, n = count(s, axis=0)
      pos[name], neg[name] = pos[name] + p, neg[name] + n
      if record:
        if k is None:  # step t0 + 1 counts towards every recorded t >= t0 + 1
          upto = (t0 + 1 <= record_at).astype(jnp.int32)
          ps, ns = batch_sum(count(s)[0], 0)[None], batch_sum(count(s)[1], 0)[None]
        else:  # steps t0 + 1 .. t0 + k of the block
          upto = (t0 + 1 + jnp.arange(k, dtype=jnp.int32)[None, :] <= record_at[:, None]).astype(jnp.int32)
          ps, ns = (batch_sum(c, 1) for c in count(s))
        mix = lambda c: jnp.tensordot(upto.reshape(len(record), -1), c, axes=1)  # noqa: E731
        rec_pos[name], rec_neg[name] = rec_pos[name] + mix(ps), rec_neg[name] + mix(ns)
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
        return lowering.contract(op, args)
      axes = [0 if spiking(a) else None for a in op.ins]
      fixed = [None if ax == 0 else v for v, ax in zip(args, axes)]
      moving = tuple(v for v, ax in zip(args, axes) if ax == 0)

      def one(moving):
        it = iter(moving)
        return lowering.contract(op, [next(it) if ax == 0 else f for f, ax in zip(fixed, axes)])

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
    return (neurons, maxes, acc, pos, neg, rec_pos, rec_neg, t0 + (1 if k is None else k)), accs

  if block is None:
    carry, accs = jax.lax.scan(lambda c, _: run(c, None), carry, None, length=num_steps)
  else:
    n_full, rest = divmod(num_steps, block)
    carry, accs = jax.lax.scan(lambda c, _: run(c, block), carry, None, length=n_full)
    accs = accs.reshape((n_full * block,) + accs.shape[2:])
    if rest:
      carry, tail = run(carry, rest)
      accs = jnp.concatenate([accs, tail], axis=0)
  outputs = _windowed_readout(accs, snn.readout_delay)
  # A sample whose input holds a NaN or an infinity reads out NaN at every step, as its ANN would: no neuron can
  # fire on a NaN current, and the readout would otherwise be a confident answer made of the biases alone.
  finite = _finite_samples(x)
  outputs = jnp.where(finite.reshape((1, -1) + (1,) * (outputs.ndim - 2)), outputs, jnp.nan)
  _, _, _, pos, neg, rec_pos, rec_neg, _ = carry
  recorded = {"steps": record, "pos": rec_pos, "neg": rec_neg} if record else None
  return Trace(outputs=outputs, pos_spikes=pos, neg_spikes=neg, recorded=recorded)


def count_dtype(num_steps: int):
  """The narrowest signed int type that holds every count in ``-num_steps .. num_steps``."""
  for dtype in (jnp.int8, jnp.int16):
    if num_steps <= jnp.iinfo(dtype).max:
      return dtype
  return jnp.int32


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
             exact: bool = True, progress: bool = False, record_steps=(), checkpoint=None,
             checkpoint_every: int = 10, mesh=None) -> dict:
  """Accuracy after every t = 1..T over a whole dataset, streamed batch by batch, resumable.

  Args:
    snn: a converted network.
    batches: an iterable of ``(x, labels)`` or ``(x, labels, mask)`` (``mask`` marks real examples in a padded last
      batch), labels as ints. The same sequence every time the job runs (to resume).
    num_steps: time steps T.
    block_size: schedule, as in :func:`simulate`.
    exact: as in :func:`simulate`.
    progress: show a tqdm progress bar (images per second) if tqdm is installed.
    record_steps: steps t at which to total each neuron's spikes (see :func:`simulate`): ``"recorded"`` in the
      result, for firing rates and energy at every recorded T from this one run.
    checkpoint: a file path: progress is written there atomically every ``checkpoint_every`` batches, and a run
      that finds it (killed and started again with the same network, data order and arguments) skips the batches it
      covers, so the result equals an uninterrupted run's. A checkpoint of another job (other network data, T or
      arguments) is refused.
    checkpoint_every: batches between checkpoint writes.
    mesh: a ``jax.sharding.Mesh`` to shard every batch over (its ``"batch"`` axis); default all local devices
      (padded and masked: results equal to one device's).

  Returns:
    ``{"accuracy": float64 [T], "correct": int64 [T], "count": int, "pos_spikes": {site: total},
    "neg_spikes": {site: total}, "non_finite": int, "recorded": {"steps": [...], "pos": {site: int64 [K,
    *site_shape]}, "neg": {...}} or None}``: the accuracy after t steps is ``accuracy[t - 1]``; spike totals are
    summed over examples, neurons and steps (for firing rates: divide by count, neurons and T). ``non_finite``
    counts the examples whose input held a NaN or an infinity: their readout is NaN (see :func:`simulate`), they
    count as wrong, and a warning says how many there were.

  Raises:
    ValueError: for an empty iterable, a bad batch (see :func:`simulate`), or a checkpoint of another job.
  """
  record = tuple(sorted(set(int(t) for t in record_steps)))
  mesh = parallel.batch_mesh(mesh, "jaxsnn.evaluate")
  fingerprint = job_fingerprint(snn, num_steps, block_size, exact, record) if checkpoint is not None else None
  snn = parallel.replicate(mesh, snn)

  def run(x, mask):
    return simulate(snn, x, num_steps, block_size, exact=exact, record_steps=record, sample_weights=mask)

  return stream(run, batches, num_steps, record, progress=progress, checkpoint=checkpoint,
                checkpoint_every=checkpoint_every, fingerprint=fingerprint, caller="jaxsnn.evaluate", mesh=mesh)


def stream(simulate_batch: Callable[[Any, np.ndarray], Trace], batches, num_steps: int, record: tuple = (), *,
           progress: bool = False, checkpoint=None, checkpoint_every: int = 10, fingerprint: str | None = None,
           caller: str = "jaxsnn.evaluate", mesh=None) -> dict:
  """The streaming, resumable loop of :func:`evaluate` around any ``simulate_batch(x, mask) -> Trace``.

  With a mesh, every batch is padded to a multiple of its batch axis (the padding masked out) and sharded over it.
  """
  state = _load_progress(checkpoint, fingerprint, caller) if checkpoint is not None else None
  if state is None:
    state = {"batches": 0, "correct": np.zeros(num_steps, np.int64), "count": 0, "non_finite": 0, "pos": {},
             "neg": {}, "rec_pos": {}, "rec_neg": {}}
  bar = None
  if progress:
    try:
      from tqdm.auto import tqdm
      bar = tqdm(unit="img", desc=f"SNN T={num_steps}", initial=state["count"])
    except ImportError:  # progress is a nicety, not a dependency
      bar = None
  done_before = state["batches"]
  for i, batch in enumerate(batches):
    if i < done_before:
      continue  # covered by the checkpoint
    x, labels, *rest = batch
    mask = np.asarray(rest[0], bool) if rest else np.ones(np.shape(labels)[0], bool)
    size = parallel.padded_size(mesh, int(mask.shape[0]))
    labels, mask = np.asarray(parallel.pad(np.asarray(labels), size)), np.asarray(parallel.pad(mask, size, False))
    x, device_mask = parallel.shard_batch(mesh, x, mask)
    trace = simulate_batch(x, device_mask)
    finite = np.asarray(_finite_samples(x))
    hits = np.asarray(trace.outputs.argmax(-1) == jnp.asarray(labels)[None]) & finite[None]  # [T, B]
    state["non_finite"] += int((~finite & mask).sum())
    state["correct"] = state["correct"] + hits[:, mask].sum(axis=1)
    state["count"] += int(mask.sum())
    for totals, spikes in ((state["pos"], trace.pos_spikes), (state["neg"], trace.neg_spikes)):
      for site, c in spikes.items():
        totals[site] = totals.get(site, 0) + int(np.asarray(c)[mask].sum())
    if record:
      for totals, rec in ((state["rec_pos"], trace.recorded["pos"]), (state["rec_neg"], trace.recorded["neg"])):
        for site, c in rec.items():
          totals[site] = totals.get(site, 0) + np.asarray(c, np.int64)
    state["batches"] = i + 1
    if checkpoint is not None and (i + 1 - done_before) % checkpoint_every == 0:
      _save_progress(checkpoint, fingerprint, state)
    if bar is not None:
      bar.update(int(mask.sum()))
      bar.set_postfix(acc=f"{state['correct'][-1] / max(state['count'], 1):.4f}")
  if bar is not None:
    bar.close()
  if state["count"] == 0:
    raise ValueError(f"{caller}: batches is empty.")
  if checkpoint is not None:
    _save_progress(checkpoint, fingerprint, state)
  if state["non_finite"]:
    warnings.warn(f"{caller}: {state['non_finite']} of {state['count']} examples had a NaN or infinite input; their "
                  "readout is NaN and they count as wrong.", stacklevel=2)
  correct = np.asarray(state["correct"], np.int64)
  return {"accuracy": correct / state["count"], "correct": correct, "count": state["count"],
          "pos_spikes": state["pos"], "neg_spikes": state["neg"], "non_finite": state["non_finite"],
          "recorded": {"steps": list(record), "pos": state["rec_pos"], "neg": state["rec_neg"]} if record else None}


def _windowed_readout(accs, delay):
  """``accs[t - 1]`` sums the readout over steps 1..t; the readout after t steps is its mean over steps s + 1..t with
  ``s = min(delay, t - 1)``: the first ``delay`` steps are left out wherever a later step is left (delay 0: the
  plain mean, bit for bit)."""
  num_steps = accs.shape[0]
  steps = jnp.arange(1, num_steps + 1, dtype=jnp.int32)
  start = jnp.minimum(jnp.asarray(delay, jnp.int32), steps - 1)
  before = jnp.where((start > 0).reshape((num_steps,) + (1,) * (accs.ndim - 1)),
                     jnp.take(accs, jnp.maximum(start - 1, 0), axis=0), jnp.zeros((), accs.dtype))
  count = (steps - start).astype(accs.dtype).reshape((num_steps,) + (1,) * (accs.ndim - 1))
  return (accs - before) / count


def job_fingerprint(snn: SpikingNetwork, num_steps, block_size, exact, record) -> str:
  """What a resumed evaluation must share with the run that wrote the checkpoint."""
  # The kernels' lowering decides the float rounding: a checkpoint written under another one is not resumed.
  lowered = (lowering.SMALL_CONV_POSITIONS, jax.default_backend())
  h = hashlib.sha256(repr((snn.traced.key, snn.neuron.name, snn.readout, str(snn.state_dtype), snn.fold, num_steps,
                           block_size, exact, record, lowered)).encode())
  for leaf in jax.tree_util.tree_leaves((snn.variables, snn.thresholds, snn.initial_potential, snn.offsets,
                                         snn.readout_delay)):
    h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return h.hexdigest()


def _save_progress(path, fingerprint: str, state: dict) -> None:
  arrays = {"fingerprint": np.asarray(fingerprint), "batches": np.asarray(state["batches"]),
            "correct": state["correct"], "count": np.asarray(state["count"]),
            "non_finite": np.asarray(state["non_finite"])}
  for key in ("pos", "neg", "rec_pos", "rec_neg"):
    arrays.update({f"{key}:{site}": np.asarray(v) for site, v in state[key].items()})
  atomic_write(path, lambda f: np.savez(f, **arrays))


def _load_progress(path, fingerprint: str, caller: str) -> dict | None:
  f = load_checkpoint(path, fingerprint, caller, "other network data, T, schedule or recorded steps")
  if f is None:
    return None
  state = {"batches": int(f["batches"]), "correct": np.asarray(f["correct"], np.int64), "count": int(f["count"]),
           "non_finite": int(f["non_finite"])}
  for key in ("pos", "neg", "rec_pos", "rec_neg"):
    prefix = f"{key}:"
    state[key] = {k[len(prefix):]: (int(f[k]) if key in ("pos", "neg") else np.asarray(f[k], np.int64))
                  for k in f if k.startswith(prefix)}
  return state
