"""Simulation of a converted network: the pure step function, and the only scans over time.

Time convention: time-major, ``[num_steps, batch, ...]``, step ``t`` (1-based) is index ``t - 1``.

The dynamics are defined once, in :func:`step`: ``state, out = step(snn, state, x_t)`` advances every neuron site,
max site and the readout by one step; ``init_state(snn, x)`` builds the state before the first step. Both are pure and
jitted, and ``step`` can be scanned by the caller (``lax.scan``), vmapped, or called in a Python loop with an early
stop. :func:`simulate` is that step scanned over T steps with a constant input (direct coding) or an encoder's frame
per step (:mod:`jaxsnn.encoders`), in one of two schedules of the same program:

* step-major (``block_size=None``): ``lax.scan`` over steps, each step runs the whole network once;
* time-blocked layer-major (``block_size=K``): for each block of K steps, each op runs once on the K steps (``vmap``
  over the block axis, which XLA folds into the batch), each neuron site scans its K steps elementwise; the state is
  carried across blocks. Memory grows with K.

They give bit-identical spikes and readouts (``exact=True``, the default), and a caller's own ``lax.scan`` over
:func:`step` gives the same bits as the step-major schedule. XLA's matmul and convolution kernels pick their blocking,
and so their summation order, from the operand shapes: the same rows can round differently in a batch of N and in a
batch of K*N (measured on XLA:CPU: differences of 1e-7..1e-5), and so can sums over windows or axes (average
pooling). So with ``exact=True`` the layer-major schedule runs those contractions and sums once per step of the block
(``lax.map``, the step-major kernel) and batches everything else;
``exact=False`` batches the contractions too, for speed where that pays, equal only up to float rounding.

Recording (``record=[site, ...]``): every step's spikes (and membrane potentials) of the named sites are outputs of the
time loop, ``[T, batch, ...]``; a run that records nothing stacks nothing but the readout per step, the program it
was before recording existed. An encoder's frames change the input-only values (the first layer's current) every step:
they are computed per step from the frame, as :func:`step` computes them from an explicit input.

Per-site data of the network (thresholds, initial potentials, current offsets) are leaves of the
:class:`SpikingNetwork` pytree: changing them never recompiles. A sample whose input holds a NaN or an infinity reads
out NaN at every step (as its ANN would), never a confident answer.

Max of spiking values (max pooling, ``jnp.maximum(a, b)``) uses the **cumulative-max rule**: the site keeps the
cumulative sum ``C_t`` of its inputs and emits ``g(C_t) - g(C_{t-1})`` where ``g`` is the ANN's max operation. The sum
of its outputs up to t is ``g(C_t) = t * g(mean input)`` (max is positively homogeneous), so its average equals the max
of the average inputs exactly, at every t. ``C_t`` is kept in the state dtype (float32 for a bfloat16 network).

Gradients: forward spikes are exact and their derivative is zero almost everywhere. ``surrogate=`` (a
:mod:`jaxsnn.surrogates` choice) gives every firing decision a surrogate derivative in the backward pass, so
``jax.grad`` reaches the input, the variables, thresholds, initial potentials and offsets while the spikes stay the
same bit for bit; without one, differentiating through a firing decision raises.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxsnn._src import checks, ir, lowering, rules
from jaxsnn._src.convert import SpikingNetwork, check_input
from jaxsnn._src.encoders import Encoder
from jaxsnn._src.ir import OUTPUT
from jaxsnn._src.surrogates import Surrogate, fire as fire_fn
from jaxsnn._src.jitting import jit


class Tallies(NamedTuple):
  """Each neuron's spikes so far, per sample.

  Attributes:
    pos: ``{site: int32 [batch, *site_shape]}``: positive spikes (``"output"`` too for ``readout="spike"``).
    neg: the same for negative spikes.
  """

  pos: dict
  neg: dict


class MaxState(NamedTuple):
  """State of a max site: the cumulative sum of each operand and the max of the sums at the last step."""

  cum: tuple
  last: Any


class State(NamedTuple):
  """The state of a simulated network after ``t`` steps: a pytree, carried through ``lax.scan`` by the caller or
  by :func:`simulate`.

  Attributes:
    neurons: ``{site: neuron state}`` (e.g. :class:`jaxsnn.neurons.SNMState` ``(v, m)``), in network order, plus
      ``"output"`` for ``readout="spike"``.
    maxes: ``{max site: MaxState}``.
    readout: ``[batch, *output_shape]``: the output summed over steps 1..t (in ``snn.state_dtype``).
    window_start: ``[batch, *output_shape]``: the sum over steps 1..s where the readout window starts
      (``s = min(readout_delay, t - 1)``; see :func:`readout`).
    t: int32 scalar: steps done.
    finite: bool ``[batch]``: every input value seen so far was finite (else the sample reads out NaN).
    constants: values computed before the time loop and read every step: the weights' folded forms and the input's
      contribution (the first layer's current); a new input at a step replaces the input's part.
    tallies: :class:`Tallies`, or None when not counted (``init_state(..., tallies=False)``).
  """

  neurons: dict
  maxes: dict
  readout: Any
  window_start: Any
  t: Any
  finite: Any
  constants: dict
  tallies: Tallies | None


def count_dtype(num_steps: int):
  """The narrowest signed int type that holds every count in ``-num_steps .. num_steps``."""
  for dtype in (jnp.int8, jnp.int16):
    if num_steps <= jnp.iinfo(dtype).max:
      return dtype
  return jnp.int32


def _program(snn: SpikingNetwork, x, caller: str) -> ir.Program:
  return ir.build_program(snn.apply_fn, snn.variables, x, caller=caller, fold=snn.fold)


def _boundary(program: ir.Program) -> list:
  """Ids of the constant and input-only values that the spiking part of the program reads."""
  ids = set()
  for op in program.ops:
    if isinstance(op, ir.Site):
      reads = op.ins
    else:
      inner = op.op if isinstance(op, ir.MaxSite) else op
      if program.kinds[inner.outs[0]] != ir.SPIKE:
        continue
      reads = inner.ins
    ids.update(a for a in reads if not isinstance(a, ir.Lit) and program.kinds[a] != ir.SPIKE)
  if not isinstance(program.out, ir.Lit) and program.kinds[program.out] != ir.SPIKE:
    ids.add(program.out)
  return sorted(ids)


def _constants(program: ir.Program, variables, x) -> dict:
  env = ir.initial_env(program, variables, x)
  ir.walk(program, env, kinds=frozenset({ir.CONST, ir.INPUT}))  # sites are spiking: never run here
  return {str(i): env[i] for i in _boundary(program)}


def finite_samples(x) -> jax.Array:
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


def _init_state(snn: SpikingNetwork, x, program: ir.Program, counters, tallies: bool) -> State:
  th, state_dtype, neuron = snn.thresholds, snn.state_dtype, snn.neuron
  first = jax.tree_util.tree_leaves(x)[0]
  batch = first.shape[0]
  # Zeros of the batch's sharding: built from the input, so that a batch sharded over a mesh (explicit sharding
  # included) gives every piece of state the same sharding, and the time loop's carry keeps one type.
  batch_zeros = jnp.zeros_like(first.reshape(batch, -1)[:, 0], jnp.int32)

  def zeros(shape, dtype):
    if len(shape) and shape[0] == batch:
      return jnp.broadcast_to(batch_zeros.astype(dtype).reshape((batch,) + (1,) * (len(shape) - 1)), shape)
    return jnp.zeros(shape, dtype)

  def neuron_state(name, shape):
    v0 = snn.initial_potential[name].astype(state_dtype) * th[name].astype(state_dtype)
    state = neuron.init(shape, state_dtype, v0)
    if neuron.counters:
      state = state._replace(**{f: getattr(state, f).astype(counters) for f in neuron.counters})
    return jax.tree_util.tree_map(lambda a: a + zeros(a.shape, a.dtype), state)

  shapes = {s.name: program.avals[s.x].shape for s in program.sites}
  out_aval = program.aval(program.out)
  if snn.readout == "spike":
    shapes[OUTPUT] = out_aval.shape
  neurons = {name: neuron_state(name, shape) for name, shape in shapes.items()}
  maxes = {}
  for m in program.max_sites:
    # The cumulative sums of a max site in the state dtype: a bfloat16 network's running sums would otherwise stop
    # absorbing small inputs after a few hundred steps.
    cum = tuple(zeros(program.avals[a].shape, jnp.promote_types(program.avals[a].dtype, state_dtype))
                for a in m.op.ins)
    maxes[m.name] = MaxState(cum, m.op.bind(*cum)[0])
  acc = zeros(out_aval.shape, state_dtype)
  counts = None
  if tallies:
    # int32, not the narrow counter type: XLA:CPU accumulates (s > 0) into an int8 or int16 carry several times
    # slower (ResNet-20, batch 64, T = 32: 657 / 1,138 / 1,632 images*steps/s with int8 / int16 / int32 tallies).
    counts = Tallies({k: zeros(s, jnp.int32) for k, s in shapes.items()},
                     {k: zeros(s, jnp.int32) for k, s in shapes.items()})
  return State(neurons=neurons, maxes=maxes, readout=acc, window_start=acc, t=jnp.zeros((), jnp.int32),
               finite=finite_samples(x), constants=_constants(program, snn.variables, x), tallies=counts)


def _cummax(op: ir.Op, state: MaxState, args, out_dtype):
  cum = tuple(c + a.astype(c.dtype) for c, a in zip(state.cum, args))
  current = op.bind(*cum)[0]
  return MaxState(cum, current), (current - state.last).astype(out_dtype)


def _advance(program: ir.Program, snn: SpikingNetwork, state: State, k: int | None, fire, counters,
             record=None, exact: bool = True, trace: frozenset = frozenset(), potentials: bool = False,
             inputs: dict | None = None) -> tuple[State, Any, tuple, dict]:
  """Runs k steps layer-major (spiking values carry a leading k axis), or one step if k is None.

  Args:
    trace: sites whose spikes (and, with ``potentials``, membrane potentials) to return for every step.
    inputs: for a block of a time-varying input: the input-only values of each of its steps (``{id: [k, ...]}``),
      in place of the state's constant ones.

  Returns:
    ``(state, z, sums, traced)``: the new state, the output of each step (``[k, batch, ...]`` for a block),
    ``(readout, window_start, t)`` after each step (stacked over the block), and ``{site: (spikes, potentials or
    None)}`` of the traced sites (int8 spike signs; stacked over the block).
  """
  neuron, th = snn.neuron, snn.thresholds
  if inputs:  # input-only values vary over the block's steps: they carry its leading axis, like spikes
    spiking = lambda a: program.kind(a) != ir.CONST  # noqa: E731
  else:
    spiking = lambda a: program.kind(a) == ir.SPIKE  # noqa: E731
  neurons, maxes = dict(state.neurons), dict(state.maxes)
  tallies = None if state.tallies is None else Tallies(dict(state.tallies.pos), dict(state.tallies.neg))
  traced = {}
  env = {int(i): v for i, v in state.constants.items()}
  if inputs:
    env.update({int(i): v for i, v in inputs.items()})

  def one_step(threshold, st, z):
    st, s = neuron.step(threshold, st, z, fire)
    changed = [f for f in neuron.counters if getattr(st, f).dtype != counters]
    if changed:
      raise ValueError(f"jaxsnn.simulate: neuron {neuron.name!r} declares {changed} as counters, so they are kept "
                       f"in {jnp.dtype(counters).name}, but its step returned them as "
                       f"{[getattr(st, f).dtype.name for f in changed]}: keep the dtype of the state it is given "
                       f"(e.g. `m + pos.astype(m.dtype)`).")
    return st, s

  def neuron_steps(threshold, st, z, name):
    keep_v = potentials and name in trace
    v = None
    if k is None:
      st, s = one_step(threshold, st, z)
      v = st.v if keep_v else None
    elif keep_v:  # the potential after each step of the block
      def with_potential(c, zk):
        c, sk = one_step(threshold, c, zk)
        return c, (sk, c.v)

      st, (s, v) = jax.lax.scan(with_potential, st, z)
    else:
      st, s = jax.lax.scan(lambda c, zk: one_step(threshold, c, zk), st, z)
    if name in trace:
      # sign(s), one op: XLA:CPU writes it into the stacked output about 3x cheaper per element than
      # (s > 0) - (s < 0) (benchmarks/recording.py).
      traced[name] = (jnp.sign(s).astype(jnp.int8), v)
    if tallies is not None:
      pos, neg = (s > 0).astype(jnp.int32), (s < 0).astype(jnp.int32)
      if k is not None:
        pos, neg = pos.sum(axis=0), neg.sum(axis=0)
      tallies.pos[name], tallies.neg[name] = tallies.pos[name] + pos, tallies.neg[name] + neg
    if record is not None:
      record(name, s, state.t, k)
    return st, s

  def site_rule(site, args):
    z = args[0] + snn.offsets[site.name]
    if k is not None and not spiking(site.x):  # the first layer's current: constant, same for every step
      z = jnp.broadcast_to(z, (k,) + z.shape)
    neurons[site.name], s = neuron_steps(th[site.name], neurons[site.name], z, site.name)
    return s

  def max_rule(msite, args):
    dtype = program.avals[msite.op.outs[0]].dtype
    cummax = lambda st, a: _cummax(msite.op, st, a, dtype)  # noqa: E731
    if k is None:
      maxes[msite.name], y = cummax(maxes[msite.name], args)
    else:
      maxes[msite.name], y = jax.lax.scan(cummax, maxes[msite.name], args)
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

    if exact and rules.runs_per_step(op.prim):
      return jax.lax.map(one, moving)  # the step-major kernel (and order of additions), once per step of the block
    return jax.vmap(one)(moving)

  ir.walk(program, env, kinds=frozenset({ir.SPIKE}), op_rule=op_rule, site_rule=site_rule, max_rule=max_rule)
  z = ir.read(env, program.out)
  if k is not None and not spiking(program.out):
    z = jnp.broadcast_to(z, (k,) + z.shape)
  if snn.readout == "spike":
    neurons[OUTPUT], z = neuron_steps(th[OUTPUT], neurons[OUTPUT], z, OUTPUT)
  z = z.astype(snn.state_dtype)
  delay = snn.readout_delay

  def accumulate(carry, zk):
    acc, start, t = carry  # t: steps done before this one
    start = jnp.where(t <= delay, acc, start)  # the window starts after step min(delay, t)
    acc = acc + zk
    return (acc, start, t + 1), acc

  if k is None:
    (acc, start, t), _ = accumulate((state.readout, state.window_start, state.t), z)
    sums = (acc, start, t)
  else:
    (acc, start, t), sums = jax.lax.scan(
        lambda c, zk: (lambda c2: (c2, c2))(accumulate(c, zk)[0]), (state.readout, state.window_start, state.t), z)
  new = State(neurons=neurons, maxes=maxes, readout=acc, window_start=start, t=t, finite=state.finite,
              constants=state.constants, tallies=tallies)
  return new, z, sums, traced


def readout(snn: SpikingNetwork, state: State) -> jax.Array:
  """The network's answer after ``state.t`` steps: the output averaged over steps ``s + 1 .. t`` with
  ``s = min(snn.readout_delay, t - 1)`` (with no delay: over all t steps); NaN for a sample whose input was not
  finite. Equal, bit for bit, to ``simulate(snn, x, t).outputs[t - 1]``.

  Args:
    snn: the network.
    state: its state after t >= 1 steps (from :func:`step`).

  Returns:
    ``[batch, *output_shape]`` in ``snn.state_dtype``.
  """
  t = state.t
  start = jnp.minimum(jnp.asarray(snn.readout_delay, jnp.int32), t - 1)
  count = (t - start).astype(state.readout.dtype)
  out = (state.readout - jnp.where(start > 0, state.window_start, jnp.zeros((), state.readout.dtype))) / count
  finite = state.finite.reshape((-1,) + (1,) * (out.ndim - 1))
  return jnp.where(finite, out, jnp.nan)


def check_snn(snn, caller):
  if not isinstance(snn, SpikingNetwork):
    raise ValueError(f"{caller}: snn must be a SpikingNetwork from jaxsnn.convert; got {type(snn).__name__}.")


def check_batch(snn: SpikingNetwork, x, caller: str) -> int:
  """:func:`check_input`, and a batch of at least one example: its size."""
  batch = check_input(snn, x, caller)
  if batch == 0:
    raise ValueError(f"{caller}: the input batch is empty (0 examples); pass at least one example.")
  return batch


def init_state(snn: SpikingNetwork, x: Any, *, tallies: bool = True) -> State:
  """The state of ``snn`` before its first step on input ``x``.

  Every neuron starts at ``v = initial_potential * threshold``, every counter at 0; the weights' folded forms and
  the input's contribution (input-only layers, e.g. the first layer's current) are computed here once.

  Args:
    snn: a converted network.
    x: an input batch (the converted per-sample shape and dtype; any batch size). Its values are the input of every
      step that does not pass its own.
    tallies: count each neuron's spikes (:attr:`State.tallies`: firing rates, energy); False carries none, which
      saves memory traffic every step.

  Returns:
    A :class:`State`.

  Raises:
    ValueError: for an input that does not match the network.

  Example:
    >>> state = jaxsnn.init_state(snn, x)
    >>> for t in range(64):
    ...   state, out = jaxsnn.step(snn, state)
    ...   if (jax.nn.softmax(jaxsnn.readout(snn, state)).max(-1) > 0.9).all():
    ...     break                                     # early stop once every sample is confident
  """
  caller = "jaxsnn.init_state"
  check_snn(snn, caller)
  check_batch(snn, x, caller)
  return _init_state_jit(snn, x, bool(tallies))


@functools.partial(jit, static_argnums=2)
def _init_state_jit(snn, x, tallies):
  return _init_state(snn, x, _program(snn, x, "jaxsnn.init_state"), jnp.int32, tallies)


class Recording(NamedTuple):
  """What one step records of the sites named in ``jaxsnn.step(..., record=[site, ...])``.

  Attributes:
    spikes: ``{site: int8 [batch, *site_shape]}`` in network order: +1 for a positive spike this step, -1 for a
      negative one, 0 for none (the spike's amplitude is the neuron's threshold, ``snn.thresholds[site]``).
    potentials: ``{site: [batch, *site_shape]}``, the membrane potential ``v`` after this step (after the reset: the
      state's ``v``), in ``snn.state_dtype``; None unless asked (``record_potentials=True``).
  """

  spikes: dict
  potentials: dict | None


def recordable_sites(snn: SpikingNetwork) -> tuple:
  """The sites whose spikes can be recorded, in network order: the neuron sites, and ``"output"`` for
  ``readout="spike"``."""
  return tuple(snn.site_names) + ((OUTPUT,) if snn.readout == "spike" else ())


def _record_sites(snn: SpikingNetwork, record, potentials, caller: str) -> tuple | None:
  """The named sites, validated, deduplicated and in network order; None for ``record=None``."""
  if record is None:
    if potentials:
      raise ValueError(f"{caller}: record_potentials=True needs the sites to record: pass record=[site, ...] "
                       f"(this network's sites: {list(recordable_sites(snn))}).")
    return None
  names = [record] if isinstance(record, str) else record
  try:
    names = list(names)
  except TypeError:
    raise ValueError(f"{caller}: record must be a list of site names; got {record!r}.") from None
  sites = recordable_sites(snn)
  unknown = [n for n in names if not isinstance(n, str) or n not in sites]
  if unknown:
    raise ValueError(f"{caller}: record names {unknown}, which are not sites of this network; its sites are "
                     f"{list(sites)}.")
  if potentials:
    fields = jax.eval_shape(lambda: snn.neuron.init((1,), snn.state_dtype))._fields
    if "v" not in fields:
      raise ValueError(f"{caller}: record_potentials=True reads the neuron state's membrane potential v, but neuron "
                       f"{snn.neuron.name!r}'s state has fields {list(fields)}.")
  return tuple(n for n in sites if n in set(names))


def step(snn: SpikingNetwork, state: State, x: Any = None, *, surrogate: Surrogate | None = None,
         record=None, record_potentials: bool = False) -> tuple:
  """Advances every neuron, max site and the readout of ``snn`` by one time step: the SNN's pure step function.

  Jitted, vmap-able, and usable inside the caller's own ``lax.scan``; :func:`simulate` is this step scanned (one
  definition of the dynamics), and a ``lax.scan`` over it gives the same bits as ``simulate``'s step-major schedule.

  Args:
    snn: a converted network.
    state: from :func:`init_state` or a previous step.
    x: this step's input (same shapes as the input of :func:`init_state`; e.g. a frame of a video, or a rate-coded
      image: ``encoder(x, state.t)`` with a :mod:`jaxsnn.encoders` code); input-only layers are then computed from it
      this step, and it stays the input of later steps that pass none. None: the last input given (direct coding).
    surrogate: a :mod:`jaxsnn.surrogates` choice: gradients through the firing decisions (the forward spikes do not
      change); None: differentiating through spikes raises.
    record: site names (``snn.site_names``, and ``"output"`` for ``readout="spike"``) whose spikes this step to
      return, as a third result (:class:`Recording`); None (the default) returns two results.
    record_potentials: with ``record``: also the membrane potentials of those sites after this step.

  Returns:
    ``(state, out)``: the new state and this step's output ``[batch, *output_shape]`` (the output layer's current,
    or its spikes for ``readout="spike"``); :func:`readout` gives the averaged answer so far. With ``record``:
    ``(state, out, recording)``, a :class:`Recording` (a ``lax.scan`` stacks it into ``[T, batch, ...]``, the layout
    of ``simulate(..., record=...)``).

  Raises:
    ValueError: for an input that does not match the network, or a recorded name that is not one of its sites.

  Example:
    >>> def body(state, frame):
    ...   state, out = jaxsnn.step(snn, state, frame)
    ...   return state, jaxsnn.readout(snn, state)
    >>> state, answers = jax.lax.scan(body, jaxsnn.init_state(snn, frames[0]), frames)   # frames [T, batch, ...]
    >>> state, out, rec = jaxsnn.step(snn, state, record=[snn.site_names[0]])   # rec.spikes: {site: [batch, ...]}
  """
  caller = "jaxsnn.step"
  check_snn(snn, caller)
  sites = _record_sites(snn, record, bool(record_potentials), caller)
  if not isinstance(state, State):
    raise ValueError(f"{caller}: state must be a jaxsnn.State from jaxsnn.init_state; got {type(state).__name__}.")
  _check_state(snn, state, caller)
  if x is not None:
    batch = check_batch(snn, x, caller)
    if batch != state.readout.shape[0]:
      raise ValueError(f"{caller}: this step's input has {batch} examples but the state holds {state.readout.shape[0]} "
                       "(from jaxsnn.init_state); every step of a run takes the same batch.")
  fire_fn(surrogate)  # validates the surrogate before tracing
  state, out, traced = _step_jit(snn, state, x, surrogate, frozenset(sites or ()), bool(record_potentials))
  if sites is None:
    return state, out
  return state, out, _recording(traced, sites, bool(record_potentials))


def _recording(traced: dict, sites: tuple, potentials: bool) -> Recording:
  """The traced ``{site: (spikes, potentials)}`` as a :class:`Recording` in network order (jit sorts dict keys)."""
  return Recording({n: traced[n][0] for n in sites}, {n: traced[n][1] for n in sites} if potentials else None)


def _check_state(snn: SpikingNetwork, state: State, caller: str) -> None:
  """A state of this network: its sites, their shapes, and its output's."""
  if set(state.neurons) != set(snn.site_names) | ({OUTPUT} if snn.readout == "spike" else set()):
    raise ValueError(f"{caller}: the state's neuron sites {sorted(state.neurons)} are not this network's "
                     f"{list(snn.site_names)}; make the state with jaxsnn.init_state(snn, x) of this network.")
  if tuple(state.readout.shape[1:]) != tuple(snn.output_shape):
    raise ValueError(f"{caller}: the state's readout has per-example shape {tuple(state.readout.shape[1:])}, this "
                     f"network's output {tuple(snn.output_shape)}; make the state with jaxsnn.init_state(snn, x).")


@functools.partial(jit, static_argnums=(3, 4, 5))
def _step_jit(snn, state, x, surrogate, trace: frozenset, potentials: bool):
  counters = next((getattr(s, f).dtype for s in state.neurons.values() for f in snn.neuron.counters), jnp.int32)
  if x is None:
    batch = state.readout.shape[0]
    treedef, spec = snn.input_spec
    x_spec = jax.tree_util.tree_unflatten(treedef, [jax.ShapeDtypeStruct((batch,) + s, d) for s, d in spec])
    program = _program(snn, x_spec, "jaxsnn.step")
  else:
    program = _program(snn, x, "jaxsnn.step")
    state = state._replace(constants=_constants(program, snn.variables, x),
                           finite=state.finite & finite_samples(x))
  state, z, _, traced = _advance(program, snn, state, None, fire_fn(surrogate), counters, trace=trace,
                                 potentials=potentials)
  return state, z, traced


class Trace(NamedTuple):
  """What one simulation run records.

  Attributes:
    outputs: ``[num_steps, batch, *output_shape]``: the readout averaged over steps 1..t (after the first
      ``snn.readout_delay`` steps where t allows), for every t (so ``outputs[t - 1]`` is the answer after t steps).
    pos_spikes: ``{site: int32 [batch, *site_shape]}``: positive spikes per neuron over the whole run, in network
      order (``readout="spike"`` adds ``"output"``); None with ``tallies=False``.
    neg_spikes: same for negative spikes.
    recorded: None, or (``simulate(..., record_steps=...)``) ``{"steps": (t, ...), "pos": {site: int32 [K,
      *site_shape]}, "neg": {...}}``: each neuron's spikes over steps 1..t for every recorded t, summed over the
      batch (weighted by ``sample_weights``): firing rates and SynOps at every recorded T from one run.
    spikes: None, or (``simulate(..., record=[site, ...])``) ``{site: int8 [num_steps, batch, *site_shape]}`` in
      network order: every step's spikes, +1 positive, -1 negative, 0 none (amplitude: the site's threshold). Summed
      over time, ``(spikes > 0)`` and ``(spikes < 0)`` are ``pos_spikes`` and ``neg_spikes``.
    potentials: None, or (``record_potentials=True``) ``{site: [num_steps, batch, *site_shape]}``: each neuron's
      membrane potential after every step (the state's ``v``, after the reset), in ``snn.state_dtype``.
  """

  outputs: Any
  pos_spikes: dict | None
  neg_spikes: dict | None
  recorded: Any = None
  spikes: dict | None = None
  potentials: dict | None = None

  @property
  def num_steps(self) -> int:
    return self.outputs.shape[0]


def simulate(snn: SpikingNetwork, x: Any, num_steps: int, *, block_size: int | None = None,
             exact: bool = True, record_steps=(), sample_weights=None, tallies: bool = True,
             surrogate: Surrogate | None = None, remat: bool = False, record=None, record_potentials: bool = False,
             encoder: Encoder | None = None) -> Trace:
  """Simulates ``snn`` on input ``x`` (a constant analog current every step, or an ``encoder``'s frames) for
  ``num_steps`` steps.

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
    tallies: count each neuron's spikes over the run (``Trace.pos_spikes`` / ``neg_spikes``: firing rates, energy,
      conversion error); False (accuracy only) carries no counts and is faster.
    surrogate: a :mod:`jaxsnn.surrogates` choice, for ``jax.grad`` through the simulation (same forward spikes);
      None: differentiating through spikes raises.
    remat: for gradients: recompute each step's (each block's) activations in the backward pass
      (``jax.checkpoint``) instead of keeping all T steps' in memory; the carried state of every step is still kept.
      Same values; less memory, about one more forward pass of compute (``benchmarks/remat.py``).
    record: site names (``snn.site_names``, and ``"output"`` for ``readout="spike"``) whose spikes at every step to
      keep (``Trace.spikes``, ``[num_steps, batch, ...]``, in network order); None (the default) keeps none and runs
      the same program as before recording existed. Memory: one byte per neuron, sample and step.
    record_potentials: with ``record``: also keep those sites' membrane potentials after every step
      (``Trace.potentials``).
    encoder: a :mod:`jaxsnn.encoders` code giving each step's frame (``encoder(x, t)``), e.g.
      ``jaxsnn.encoders.poisson(key)``; input-only layers then run every step on that step's frame. None (or
      ``encoders.direct()``): ``x`` itself every step, its input-only layers computed once.

  Returns:
    A :class:`Trace`; ``trace.outputs[t - 1]`` is the readout averaged over steps 1..t (over steps
    ``min(d, t - 1) + 1 .. t`` with a readout delay ``d = snn.readout_delay``; NaN for a sample whose input is not
    finite).

  Raises:
    ValueError: for num_steps or block_size that are not positive ints, an input that does not match the network,
      a recorded name that is not one of its sites (the message lists them), or an encoder that is not one.

  Example:
    >>> trace = jaxsnn.simulate(snn, x_test, num_steps=256)
    >>> acc = jaxsnn.accuracy_vs_time(trace, y_test)   # accuracy after every t = 1..256
    >>> trace = jaxsnn.simulate(snn, x_test, 32, record=snn.site_names[:2], record_potentials=True)
    >>> trace.spikes[snn.site_names[0]].shape          # (32, batch, *site_shape)
  """
  caller = "jaxsnn.simulate"
  check_snn(snn, caller)
  sites = _record_sites(snn, record, bool(record_potentials), caller)
  if encoder is not None and not isinstance(encoder, Encoder):
    raise ValueError(f"{caller}: encoder must be a jaxsnn.encoders.Encoder (e.g. jaxsnn.encoders.poisson(key)); "
                     f"got {type(encoder).__name__}.")
  if encoder is not None and encoder.constant:
    encoder = None  # direct coding: the constant-input program
  num_steps = checks.positive_int(num_steps, "num_steps", caller)
  if block_size is not None:
    block_size = min(checks.positive_int(block_size, "block_size", caller), num_steps)
  batch = check_batch(snn, x, caller)
  record = checks.record_steps(record_steps, num_steps, caller)
  weights = jnp.ones(batch, jnp.int32) if sample_weights is None else jnp.asarray(sample_weights, jnp.int32)
  if weights.shape != (batch,):
    raise ValueError(f"{caller}: sample_weights must have shape ({batch},); got {weights.shape}.")
  fire_fn(surrogate)
  trace = _simulate(snn, x, weights, encoder, num_steps, block_size, bool(exact), record, bool(tallies or record),
                    surrogate, bool(remat), frozenset(sites or ()), bool(record_potentials))
  order = list(snn.site_names) + ([OUTPUT] if snn.readout == "spike" else [])
  ordered = lambda d: None if d is None else {k: d[k] for k in order}  # noqa: E731  (jit returns sorted keys)
  recorded = trace.recorded and dict(trace.recorded, pos=ordered(trace.recorded["pos"]),
                                     neg=ordered(trace.recorded["neg"]))
  rec = None if sites is None else _recording(trace.spikes, sites, bool(record_potentials))
  spikes, potentials = (None, None) if rec is None else rec
  if not tallies:
    return Trace(trace.outputs, None, None, recorded, spikes, potentials)
  return Trace(trace.outputs, ordered(trace.pos_spikes), ordered(trace.neg_spikes), recorded, spikes, potentials)


@functools.partial(jit, static_argnums=(4, 5, 6, 7, 8, 9, 10, 11, 12))
def _simulate(snn: SpikingNetwork, x, weights, encoder: Encoder | None, num_steps: int, block: int | None, exact: bool,
              record: tuple, tallies: bool, surrogate, remat: bool, trace: frozenset, potentials: bool) -> Trace:
  """The run; ``Trace.spikes`` holds the traced ``{site: (spikes, potentials or None)}`` (sorted by jit)."""
  program = _program(snn, x, "jaxsnn.simulate")
  # A neuron's own counters (SNM's memory) never exceed num_steps in magnitude: kept in the narrowest int type that
  # holds it, they cost less memory traffic every step.
  counters = count_dtype(num_steps)
  fire = fire_fn(surrogate)
  state = _init_state(snn, x, program, counters, tallies)
  shapes = {k: v.shape[1:] for k, v in state.tallies.pos.items()} if tallies else {}
  rec0 = {k: jnp.zeros((len(record),) + s, jnp.int32) for k, s in shapes.items()} if record else {}
  record_at = jnp.asarray(record, jnp.int32)

  def batch_sum(c, batch_axis):  # the weighted sum over samples of per-step counts
    w = weights.reshape((1,) * batch_axis + (-1,) + (1,) * (c.ndim - batch_axis - 1))
    return (c * w).sum(axis=batch_axis)

  def run(carry, k):
    state, (rec_pos, rec_neg) = carry
    rec_pos, rec_neg = dict(rec_pos), dict(rec_neg)

    def recorder(name, s, t0, k):
      pos, neg = (s > 0).astype(jnp.int32), (s < 0).astype(jnp.int32)
      if k is None:  # step t0 + 1 counts towards every recorded t >= t0 + 1
        upto = (t0 + 1 <= record_at).astype(jnp.int32)
        ps, ns = batch_sum(pos, 0)[None], batch_sum(neg, 0)[None]
      else:  # steps t0 + 1 .. t0 + k of the block
        upto = (t0 + 1 + jnp.arange(k, dtype=jnp.int32)[None, :] <= record_at[:, None]).astype(jnp.int32)
        ps, ns = batch_sum(pos, 1), batch_sum(neg, 1)
      mix = lambda c: jnp.tensordot(upto.reshape(len(record), -1), c, axes=1)  # noqa: E731
      rec_pos[name], rec_neg[name] = rec_pos[name] + mix(ps), rec_neg[name] + mix(ns)

    inputs = None
    if encoder is not None:  # a new frame every step: its input-only values too (as jaxsnn.step computes them)
      if k is None:
        frame = encoder(x, state.t)
        state = state._replace(constants=_constants(program, snn.variables, frame),
                               finite=state.finite & finite_samples(frame))
      else:
        inputs, finite = jax.lax.map(lambda t: frame_inputs(encoder(x, t)), state.t + jnp.arange(k, dtype=jnp.int32))
        state = state._replace(finite=state.finite & finite.all(axis=0))
    state, _, sums, traced = _advance(program, snn, state, k, fire, counters, recorder if record else None, exact,
                                      trace, potentials, inputs)
    return (state, (rec_pos, rec_neg)), (sums, traced)

  input_ids = [i for i in state.constants if program.kinds[int(i)] == ir.INPUT]

  def frame_inputs(frame):  # one step's input-only values (the step-major kernels: lax.map runs them per step)
    values = _constants(program, snn.variables, frame)
    return {i: values[i] for i in input_ids}, finite_samples(frame)

  carry = (state, (rec0, rec0))
  body = (lambda k: jax.checkpoint(lambda c: run(c, k))) if remat else (lambda k: lambda c: run(c, k))
  if block is None:
    one = body(None)
    carry, sums = jax.lax.scan(lambda c, _: one(c), carry, None, length=num_steps)
  else:
    n_full, rest = divmod(num_steps, block)
    many = body(block)
    carry, sums = jax.lax.scan(lambda c, _: many(c), carry, None, length=n_full)
    sums = jax.tree_util.tree_map(lambda a: a.reshape((n_full * block,) + a.shape[2:]), sums)
    if rest:
      carry, tail = run(carry, rest)
      sums = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b], axis=0), sums, tail)
  state, (rec_pos, rec_neg) = carry
  (acc, start, t), traced = sums
  outputs = jax.vmap(lambda a, s, tt: readout(snn, state._replace(readout=a, window_start=s, t=tt)))(acc, start, t)
  recorded = {"steps": record, "pos": rec_pos, "neg": rec_neg} if record else None
  pos, neg = (state.tallies.pos, state.tallies.neg) if tallies else (None, None)
  return Trace(outputs=outputs, pos_spikes=pos, neg_spikes=neg, recorded=recorded, spikes=traced)

