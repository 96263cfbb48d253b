"""Spiking neurons as pairs of pure functions.

A neuron is a :class:`Neuron` NamedTuple ``(init, step)``:

* ``init(shape, dtype=jnp.float32, v0=None) -> State`` builds the initial state: membrane potential ``v0``
  (broadcast to ``shape``; 0 when None), everything else at rest;
* ``step(threshold, state, current, fire=exact_fire) -> (state, spikes)`` advances one time step; ``fire(v, threshold)``
  is the firing decision ``v >= threshold``, the one place where a surrogate gradient enters
  (:mod:`jaxsnn.surrogates`): the simulator passes the exact decision (whose derivative is refused) or a surrogate
  one (0/1 with a surrogate derivative). The forward spikes are the same either way, bit for bit.

``spikes`` are in activation units: ``+threshold``, ``-threshold`` or ``0`` per neuron, so that the affine operations of
the ANN can be applied to them unchanged (see DESIGN.md, "Why spikes carry θ"). Hyper-parameters (the reset rule) are
closed over by the factory; per-neuron thresholds and initial potentials are data, so changing them never recompiles
anything. Factories return one object per configuration (``IF() is IF("subtract")``), so a jitted simulator that takes
the neuron as static data compiles once per configuration.

All neurons share these conventions:

* the input current is added to the membrane every step (the bias too);
* a positive spike fires when ``v >= threshold``; a negative one (where the neuron has them) when ``v <= -threshold``;
* a neuron whose threshold is ``<= 0`` never fires (a dead unit; nothing divides by the threshold);
* at most one spike per neuron per step.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax.numpy as jnp

from jaxsnn._src.surrogates import exact_fire

Array = Any


class SNMState(NamedTuple):
  """State of a signed neuron with memory.

  Attributes:
    v: membrane potential, same dtype as the current.
    m: memory, the integer net count of spikes sent so far (positive minus negative); never negative.
  """

  v: Array
  m: Array


class IFState(NamedTuple):
  """State of an integrate-and-fire neuron (with or without signed spikes).

  Attributes:
    v: membrane potential.
  """

  v: Array


class Neuron(NamedTuple):
  """A spiking neuron model: a pair of pure functions.

  Attributes:
    init: ``init(shape, dtype=jnp.float32, v0=None) -> State``; ``v0`` is the initial membrane potential
      (broadcastable to ``shape``, in the units of the current; None for 0).
    step: ``step(threshold, state, current, fire=exact_fire) -> (state, spikes)``; ``spikes`` are ``+threshold``,
      ``-threshold`` or 0, in the threshold's dtype. Every firing decision must be taken as ``fire(v, threshold)``
      (or ``fire(-v, threshold)`` for ``v <= -threshold``), which returns a bool (exact) or 0/1 floats (with a
      surrogate gradient); combine them with :func:`gate` and :func:`amplitude` so both work.
    name: a short human-readable name (used in reports).
    counters: names of integer fields of the state that count spikes, so that their magnitude never exceeds the
      number of steps run (SNM's memory ``m``). The simulator may keep them in the narrowest signed integer type
      that holds its ``num_steps`` (int8 up to 127 steps): less memory traffic per step, same values. ``step`` must
      keep such a field's dtype. Default: none.
  """

  init: Callable[..., Any]
  step: Callable[[Array, Any, Array], tuple[Any, Array]]
  name: str
  counters: tuple = ()


def _potential(shape, dtype, v0):
  if v0 is None:
    return jnp.zeros(shape, dtype)
  return jnp.broadcast_to(jnp.asarray(v0, dtype), shape)


def fired(decision: Array) -> Array:
  """Whether a decision is a spike, as a bool (for integer counters such as SNM's memory): exact decisions are
  already bools; surrogate ones are 0/1 (or, in the relaxed model, a smooth step that crosses 1/2 at the
  threshold).

  Args:
    decision: from ``fire(v, threshold)`` (possibly gated).

  Returns:
    A bool array.
  """
  return decision if decision.dtype == jnp.bool_ else decision >= 0.5


def gate(decision: Array, condition: Array) -> Array:
  """``decision`` where ``condition`` holds, else no spike (works for exact bools and surrogate 0/1 floats).

  Args:
    decision: from ``fire(v, threshold)``.
    condition: a bool array broadcastable to it (e.g. ``threshold > 0``, or SNM's ``m > 0``).

  Returns:
    The gated decision, of the decision's dtype.
  """
  return jnp.where(condition, decision, jnp.zeros_like(decision))


def amplitude(threshold: Array, pos: Array, neg: Array) -> Array:
  """The spikes ``+threshold`` / ``-threshold`` / 0 of the decisions ``pos`` and ``neg``, in the threshold's dtype.

  Exact decisions (bools) select: no multiply, so no fused multiply-add can round differently in different XLA
  fusions, which keeps the two simulation schedules bit-identical. Surrogate decisions (0/1 floats) multiply, which
  carries their gradient; the values are the same (``θ · 1 = θ`` exactly).

  Args:
    threshold: the neurons' thresholds.
    pos: positive decisions (bool or 0/1 floats).
    neg: negative decisions, of the same kind.

  Returns:
    The spikes, in the threshold's dtype.
  """
  if pos.dtype == jnp.bool_:
    zero = jnp.zeros_like(threshold)
    return jnp.where(pos, threshold, jnp.where(neg, -threshold, zero))
  return (jnp.asarray(threshold, pos.dtype) * (pos - neg)).astype(jnp.result_type(threshold))


def SNM() -> Neuron:
  """The signed neuron with memory of Wang et al. (IJCAI 2022), Eq. 7–11.

  Integrate-and-fire with reset by subtraction that may also send a negative spike, but only while the net count of
  spikes it has sent (its memory ``m``, taken before the step) is positive. So the net output never goes below zero,
  exactly as a ReLU, and a late negative input can take back spikes already sent.

  Returns:
    A :class:`Neuron` with :class:`SNMState` state.

  Example:
    >>> neuron = SNM()
    >>> state = neuron.init((3,))
    >>> state, spikes = neuron.step(jnp.ones(3), state, jnp.array([1.5, 0.2, -1.0]))
    >>> spikes.tolist()
    [1.0, 0.0, 0.0]
  """
  return _SNM


def _snm_init(shape, dtype=jnp.float32, v0=None) -> SNMState:
  return SNMState(v=_potential(shape, dtype, v0), m=jnp.zeros(shape, jnp.int32))


def _snm_step(threshold, state: SNMState, current, fire=exact_fire):
  v = state.v + current
  live = threshold > 0
  pos = gate(fire(v, threshold), live)
  neg = gate(fire(-v, threshold), live & (state.m > 0))
  s = amplitude(threshold, pos, neg)
  m = state.m + fired(pos).astype(state.m.dtype) - fired(neg).astype(state.m.dtype)
  return SNMState(v=v - s, m=m), s


_SNM = Neuron(init=_snm_init, step=_snm_step, name="SNM", counters=("m",))


def IF(reset: str = "subtract") -> Neuron:
  """Integrate-and-fire neuron with positive spikes only.

  Args:
    reset: ``"subtract"`` (reset by subtraction, the usual conversion neuron) or ``"zero"`` (reset to zero: the
      residual charge above threshold is lost).

  Returns:
    A :class:`Neuron` with :class:`IFState` state.

  Raises:
    ValueError: if ``reset`` is not one of the two rules.
  """
  if not isinstance(reset, str) or reset not in _IF:
    raise ValueError(f"IF: reset must be 'subtract' or 'zero', got {reset!r}.")
  return _IF[reset]


def _if_init(shape, dtype=jnp.float32, v0=None) -> IFState:
  return IFState(v=_potential(shape, dtype, v0))


def _if_step(reset: str, threshold, state: IFState, current, fire=exact_fire):
  v = state.v + current
  pos = gate(fire(v, threshold), threshold > 0)
  s = amplitude(threshold, pos, jnp.zeros_like(pos))
  # Reset to zero keeps the charge below threshold as it is: v (1 - pos) carries the surrogate's gradient and is
  # exactly v or 0 in the forward pass.
  v = v - s if reset == "subtract" else (jnp.where(pos, jnp.zeros_like(v), v) if pos.dtype == jnp.bool_
                                         else v * (1 - pos))
  return IFState(v=v), s


# One object per reset rule: IF() is IF("subtract") is IF(reset="subtract").
_IF = {reset: Neuron(init=_if_init, step=functools.partial(_if_step, reset), name=f"IF({reset})")
       for reset in ("subtract", "zero")}


def SignedIF() -> Neuron:
  """Integrate-and-fire neuron with negative spikes but no memory (an ablation of :func:`SNM`).

  Fires a negative spike whenever ``v <= -threshold``, whatever it sent before, so its net output can go below zero:
  it converts an identity, not a ReLU.

  Returns:
    A :class:`Neuron` with :class:`IFState` state.
  """
  return _SIGNED_IF


def _signed_if_step(threshold, state: IFState, current, fire=exact_fire):
  v = state.v + current
  live = threshold > 0
  pos = gate(fire(v, threshold), live)
  neg = gate(fire(-v, threshold), live)
  s = amplitude(threshold, pos, neg)
  return IFState(v=v - s), s


_SIGNED_IF = Neuron(init=_if_init, step=_signed_if_step, name="SignedIF")
