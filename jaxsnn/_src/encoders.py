"""Input encoders: what the network receives at each step, for an input batch ``x``.

An :class:`Encoder` maps the input and a step index to that step's frame: ``frame = encoder(x, t)`` with ``t`` the
number of steps done before it (0-based: the frame of step ``t + 1``), of the shapes and dtypes of ``x``. The network
integrates its frames, so a code is usable by a converted (rate-coded) network when the frames' mean over steps tends
to ``x``: every code here has that property, and differs in how fast and with how much noise.

* :func:`direct`: ``x`` itself every step (an analog current, the paper's and jaxsnn's default). ``simulate`` runs
  its constant-input program: the input-only layers are computed once, not once per step.
* :func:`poisson`: rate coding. Each value is ``high`` with probability ``(x - low) / (high - low)`` and ``low``
  otherwise, drawn independently every step from ``jax.random.fold_in(key, t)`` (a Bernoulli process: the discrete
  time Poisson process). Unbiased; the mean of t frames has a standard deviation that falls as ``1 / sqrt(t)``.
* :func:`phase`: phase coding (Kim et al., "Deep neural networks with weighted spikes", Neurocomputing 2018): the
  value quantised to ``bits`` bits is sent one bit per step, most significant first, each bit a spike whose amplitude
  is its binary weight; the code repeats every ``bits`` steps, so after a multiple of ``bits`` steps the mean frame is
  the quantised value exactly. Deterministic; the spike's *time* within the period says what it is worth.

Why not time-to-first-spike: a TTFS code sends one spike per input and puts the value in its time. A converted network
reads values as rates (each neuron's spike count over T steps times its threshold), so one spike per input carries
only its amplitude, whatever its time: to be read correctly the spike would have to carry the whole value ``T x``,
which is direct coding compressed into one step. TTFS needs its own conversion of the hidden neurons (e.g. Rueckauer
& Liu 2018, Stanojevic et al. 2023), not an input encoder.

Encoders are pytrees: their arrays (the key, ``low`` / ``high``) are data, so a new key or range never recompiles a
simulation; what the code is (its function) is static. The frames of :func:`poisson` and :func:`phase` are piecewise
constant in ``x`` (a draw, a bit): ``jax.grad`` with respect to the input through them is zero; differentiate with
respect to the network's data (thresholds, weights) instead, or through :func:`direct`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxsnn._src import checks


@dataclasses.dataclass(frozen=True)
class Encoder:
  """An input code: ``encoder(x, t)`` is the frame of step ``t + 1`` for input ``x``.

  Build one with :func:`direct`, :func:`poisson` or :func:`phase`; pass it to :func:`jaxsnn.simulate` (``encoder=``)
  or call it for :func:`jaxsnn.step` (``jaxsnn.step(snn, state, encoder(x, state.t))``): both give the same bits.

  Attributes:
    encode: ``encode(params, x, t) -> frame``, a module-level function (static: a jitted simulation compiles once
      per function); ``x`` is the input pytree, ``t`` an int32 scalar (steps done), ``frame`` of ``x``'s shapes and
      dtypes.
    params: a pytree of arrays the code reads (data: changing them never recompiles).
    name: a short name for reports.
  """

  encode: Callable[[Any, Any, Any], Any]
  params: Any
  name: str

  def __post_init__(self):
    if not callable(self.encode):
      raise ValueError(f"jaxsnn.encoders.Encoder: encode must be a function (params, x, t) -> frame; got "
                       f"{type(self.encode).__name__}.")
    if not isinstance(self.name, str):
      raise ValueError(f"jaxsnn.encoders.Encoder: name must be a str; got {type(self.name).__name__}.")

  def __call__(self, x: Any, t: Any) -> Any:
    """The frame of step ``t + 1`` (``t`` steps done) for input ``x``.

    Args:
      x: the input batch (any pytree of arrays the network takes).
      t: the number of steps done before this frame (an int or an int32 scalar, e.g. ``state.t``).

    Returns:
      The frame, with the shapes and dtypes of ``x``.
    """
    return self.encode(self.params, x, jnp.asarray(t, jnp.int32))

  @property
  def constant(self) -> bool:
    """True for :func:`direct`: every frame is ``x`` itself."""
    return self.encode is _direct


jax.tree_util.register_dataclass(Encoder, data_fields=["params"], meta_fields=["encode", "name"])


def _direct(params, x, t):
  del params, t
  return x


def direct() -> Encoder:
  """Direct coding: the input itself, an analog current, every step (what :func:`jaxsnn.simulate` does without an
  encoder, with the same program and bits).

  Returns:
    An :class:`Encoder`.

  Example:
    >>> trace = jaxsnn.simulate(snn, x, 32, encoder=jaxsnn.encoders.direct())   # = jaxsnn.simulate(snn, x, 32)
  """
  return Encoder(_direct, {}, "direct")


def _range(low, high, caller: str) -> dict:
  low, high = jnp.asarray(low, jnp.float32), jnp.asarray(high, jnp.float32)
  try:
    concrete = np.asarray(high) > np.asarray(low)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    concrete = None  # built under a trace: checked by the caller's own values
  if concrete is not None and not concrete.all():
    raise ValueError(f"{caller}: high must be greater than low everywhere; got low={np.asarray(low).tolist()}, "
                     f"high={np.asarray(high).tolist()}.")
  return {"low": low, "high": high}


def _unit(leaf, low, high):
  """The leaf's values as fractions of the range [low, high], clipped to [0, 1]."""
  return jnp.clip((leaf.astype(jnp.float32) - low) / (high - low), 0.0, 1.0)


def _leaves(x, fn):
  """``fn(i, leaf)`` on every floating leaf of ``x`` (the i-th), the other leaves unchanged."""
  leaves, treedef = jax.tree_util.tree_flatten(x)
  out = [fn(i, leaf) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf for i, leaf in enumerate(leaves)]
  return jax.tree_util.tree_unflatten(treedef, out)


def _poisson(params, x, t):
  key = jax.random.fold_in(params["key"], t)
  low, high = params["low"], params["high"]

  def one(i, leaf):
    u = jax.random.uniform(jax.random.fold_in(key, i), leaf.shape, jnp.float32)
    return jnp.where(u < _unit(leaf, low, high), high, low).astype(leaf.dtype)

  return _leaves(x, one)


def poisson(key: jax.Array, low: Any = 0.0, high: Any = 1.0) -> Encoder:
  """Rate coding: each input value becomes a spike train whose rate is its value.

  At every step, each value ``x`` is ``high`` with probability ``p = (x - low) / (high - low)`` and ``low`` otherwise
  (values outside ``[low, high]`` are clipped to it), drawn independently per value and step from
  ``jax.random.fold_in(key, t)``: a Bernoulli process, the discrete-time Poisson process of SNN toolboxes. The mean
  frame is ``x``, so a converted network's readout tends to its direct-input readout as T grows, with noise falling
  as ``1 / sqrt(T)``. For images normalised as ``(pixel - mean) / std``, ``low = -mean / std`` and ``high = (1 -
  mean) / std`` code the pixel intensity in [0, 1] (a black pixel sends nothing, a white one a spike every step).

  The same key gives the same frames in both schedules of :func:`jaxsnn.simulate`, in a loop over
  :func:`jaxsnn.step`, and for every block size; the draws of a sample depend on its position in the batch.

  Args:
    key: a ``jax.random`` key (``jax.random.key(0)`` or ``jax.random.PRNGKey(0)``).
    low: the value sent for "no spike": a scalar or an array broadcastable to the input (e.g. per channel).
    high: the value of a spike, greater than ``low`` everywhere.

  Returns:
    An :class:`Encoder`.

  Raises:
    ValueError: for a key that is not a ``jax.random`` key, or ``high <= low``.

  Example:
    >>> mean, std = 0.5, 0.25       # the images' normalisation: x = (pixel - mean) / std
    >>> enc = jaxsnn.encoders.poisson(jax.random.key(0), low=-mean / std, high=(1 - mean) / std)
    >>> trace = jaxsnn.simulate(snn, x, 128, encoder=enc)
  """
  caller = "jaxsnn.encoders.poisson"
  if not isinstance(key, jax.Array) or not (
      jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or (key.dtype == jnp.uint32 and key.shape == (2,))):
    raise ValueError(f"{caller}: key must be a jax.random key (jax.random.key(0) or jax.random.PRNGKey(0)); got "
                     f"{getattr(key, 'dtype', type(key).__name__)} {getattr(key, 'shape', '')}.")
  return Encoder(_poisson, {"key": key, **_range(low, high, caller)}, "poisson")


def _phase(params, x, t):
  bits, low, high = params["bits"], params["low"], params["high"]
  levels = jnp.exp2(bits.astype(jnp.float32)) - 1
  place = bits - 1 - t % bits  # most significant bit first
  weight = bits.astype(jnp.float32) * jnp.exp2(place.astype(jnp.float32)) / levels

  def one(i, leaf):
    q = jnp.round(_unit(leaf, low, high) * levels).astype(jnp.int32)
    bit = jnp.right_shift(q, place) & 1
    return (low + (high - low) * weight * bit.astype(jnp.float32)).astype(leaf.dtype)

  return _leaves(x, one)


def phase(bits: int = 8, low: Any = 0.0, high: Any = 1.0) -> Encoder:
  """Phase coding (weighted spikes, Kim et al. 2018): one bit of the value per step, its time giving its weight.

  Each value is quantised to ``q = round((x - low) / (high - low) * (2**bits - 1))`` (clipped to the range). Step t
  (0-based) sends bit ``k = t mod bits`` of ``q``, most significant first, as a spike of amplitude
  ``bits * 2**(bits - 1 - k) / (2**bits - 1)`` (in units of ``high - low``, above ``low``); no spike sends ``low``.
  The mean of the frames over any ``bits`` consecutive steps is ``low + (high - low) * q / (2**bits - 1)``, the value
  to within half a quantisation step, so the readout is exact for the quantised input at multiples of ``bits`` steps;
  in between, the steps so far carry their bits' weights, which overshoots early (the first step is worth about
  ``bits / 2``). Deterministic.

  Args:
    bits: bits per value, and the period of the code in steps (1 to 24).
    low: the value of a zero bit (as in :func:`poisson`).
    high: the top of the coded range, greater than ``low``.

  Returns:
    An :class:`Encoder`.

  Raises:
    ValueError: for ``bits`` outside 1..24, or ``high <= low``.

  Example:
    >>> trace = jaxsnn.simulate(snn, x, 64, encoder=jaxsnn.encoders.phase(bits=8))
  """
  caller = "jaxsnn.encoders.phase"
  bits = checks.int_at_least(bits, "bits", caller, 1, "the code's period in steps", high=24)
  return Encoder(_phase, {"bits": jnp.asarray(bits, jnp.int32), **_range(low, high, caller)}, "phase")
