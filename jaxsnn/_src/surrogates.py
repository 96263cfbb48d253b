"""Surrogate derivatives for the firing decision of a spiking neuron.

A neuron fires when its membrane reaches the threshold: ``pos = H(v - θ)``, a step whose derivative is zero almost
everywhere, so exact spikes carry no gradient. A surrogate replaces that derivative **in the backward pass only**
(the forward spikes are the exact ones, bit for bit): with ``u = (v - θ) / θ`` the distance to the threshold in units
of the threshold, ``d pos / d v = g(u) / θ`` and ``d pos / d θ = -g(u) / θ`` (through ``v - θ``), where ``g`` is one
of the functions below. Every ``g`` has unit area (``∫ g(u) du = 1``, the mass of the true derivative, a Dirac
delta) and ``sharpness`` narrows it: ``g`` tends to the delta as the sharpness grows.

Without a surrogate, differentiating through a neuron's firing decision raises (see :func:`fire`): gradients through
spikes are never silently zero.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

KINDS = ("sigmoid", "fast_sigmoid", "triangle", "rectangle")


@dataclasses.dataclass(frozen=True)
class Surrogate:
  """A surrogate derivative ``g(u)`` of the firing step (see the module docstring).

  Build one with :func:`sigmoid`, :func:`fast_sigmoid`, :func:`triangle` or :func:`straight_through`; it is hashable
  (a static argument of jitted functions).

  Attributes:
    kind: ``"sigmoid"``, ``"fast_sigmoid"``, ``"triangle"`` or ``"rectangle"``.
    sharpness: ``k > 0``: larger is narrower.
    relaxed: False (the default): the forward spikes are the exact ones and only the backward pass uses ``g``. True:
      the *relaxed model*: every firing decision is the smooth step ``S(u)`` whose derivative is ``g`` (a spike of
      ``θ S(u)``, a fraction of a spike), in the forward pass too, so the whole simulation is one smooth function
      whose exact gradient (and finite differences) the surrogate gradient can be checked against. Not an SNN: for
      checking and analysis (:meth:`relax`).
  """

  kind: str
  sharpness: float
  relaxed: bool = False

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"jaxsnn.surrogates: kind must be one of {KINDS}; got {self.kind!r}.")
    if isinstance(self.sharpness, bool) or not self.sharpness > 0:
      raise ValueError(f"jaxsnn.surrogates: sharpness must be > 0; got {self.sharpness!r}.")

  def derivative(self, u):
    """``g(u)``, the surrogate derivative at distance ``u`` (in thresholds) from the threshold."""
    k = jnp.asarray(self.sharpness, u.dtype)
    if self.kind == "sigmoid":
      s = jax.nn.sigmoid(k * u)
      return k * s * (1 - s)
    if self.kind == "fast_sigmoid":
      return k / (2 * jnp.square(1 + k * jnp.abs(u)))
    if self.kind == "triangle":
      return k * jnp.maximum(1 - k * jnp.abs(u), 0)
    return jnp.where(jnp.abs(u) * k <= 0.5, k, jnp.zeros_like(u))

  def step(self, u):
    """``S(u)``, the smooth step whose derivative is :meth:`derivative` (``S(-inf) = 0``, ``S(0) = 1/2``,
    ``S(inf) = 1``): the relaxed model's firing decision."""
    k = jnp.asarray(self.sharpness, u.dtype)
    if self.kind == "sigmoid":
      return jax.nn.sigmoid(k * u)
    if self.kind == "fast_sigmoid":
      return 0.5 + 0.5 * k * u / (1 + k * jnp.abs(u))
    if self.kind == "triangle":
      z = jnp.clip(k * u, -1, 1)
      return 0.5 + z - 0.5 * z * jnp.abs(z)
    return jnp.clip(k * u + 0.5, 0, 1)

  def relax(self) -> "Surrogate":
    """The same surrogate with ``relaxed=True`` (see the attribute)."""
    return dataclasses.replace(self, relaxed=True)


def sigmoid(sharpness: float = 4.0) -> Surrogate:
  """The derivative of ``sigmoid(k u)``: ``k σ(k u) (1 - σ(k u))`` (Zenke & Vogels 2021 call it the sigmoid
  surrogate).

  Args:
    sharpness: ``k > 0``; the width is about ``1 / k`` thresholds.

  Returns:
    A :class:`Surrogate`.

  Example:
    >>> trace = jaxsnn.simulate(snn, x, 8, surrogate=jaxsnn.surrogates.sigmoid(4.0))
  """
  return Surrogate("sigmoid", float(sharpness))


def fast_sigmoid(sharpness: float = 4.0) -> Surrogate:
  """SuperSpike's fast sigmoid (Zenke & Ganguli 2018), scaled to unit area: ``k / (2 (1 + k |u|)^2)``.

  Args:
    sharpness: ``k > 0``.

  Returns:
    A :class:`Surrogate`.
  """
  return Surrogate("fast_sigmoid", float(sharpness))


def triangle(sharpness: float = 1.0) -> Surrogate:
  """A triangle of half-width ``1 / k`` (Bellec et al. 2018's pseudo-derivative): ``k max(1 - k |u|, 0)``.

  Args:
    sharpness: ``k > 0``.

  Returns:
    A :class:`Surrogate`.
  """
  return Surrogate("triangle", float(sharpness))


def straight_through(sharpness: float = 1.0) -> Surrogate:
  """The straight-through estimator: the step's derivative taken as ``k`` on the window ``|u| <= 1 / (2 k)`` around
  the threshold and 0 outside it (a rectangle of unit area; ``k = 1``: the window ``[θ/2, 3θ/2]``).

  Args:
    sharpness: ``k > 0``.

  Returns:
    A :class:`Surrogate`.
  """
  return Surrogate("rectangle", float(sharpness))


def _differentiated(tangent) -> bool:
  return not isinstance(tangent, SymbolicZero)


@jax.custom_jvp
def exact_fire(v, threshold):
  """``v >= threshold`` (bool): the exact firing decision, whose derivative is refused (see the module docstring).

  Args:
    v: membrane potentials.
    threshold: thresholds, broadcastable to ``v``.

  Returns:
    A bool array: where a neuron fires.

  Raises:
    ValueError: when differentiated through (a gradient reaching ``v`` or ``threshold``), naming the fix.
  """
  return v >= threshold


def _exact_fire_jvp(primals, tangents):
  if any(_differentiated(t) for t in tangents):
    raise ValueError(
        "jaxsnn: a gradient flows through a neuron's firing decision, whose exact derivative is zero almost "
        "everywhere: differentiating spikes without a surrogate would give silently zero or wrong gradients. Pass "
        "a surrogate, e.g. jaxsnn.simulate(..., surrogate=jaxsnn.surrogates.sigmoid()) (or to jaxsnn.step); the "
        "forward spikes stay exact. Differentiating only what does not pass through spikes (the ANN, the input-only "
        "layers) needs none.")
  out = exact_fire(*primals)
  return out, jnp.zeros(out.shape, jax.dtypes.float0)


exact_fire.defjvp(_exact_fire_jvp, symbolic_zeros=True)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _surrogate_fire(surrogate: Surrogate, v, threshold):
  return (v >= threshold).astype(v.dtype)


@_surrogate_fire.defjvp
def _surrogate_fire_jvp(surrogate, primals, tangents):
  v, threshold = primals
  dv, dthreshold = tangents
  theta = jnp.asarray(threshold, v.dtype)
  scale = jnp.where(theta > 0, theta, jnp.ones_like(theta))  # a dead neuron (θ = 0) never fires: no gradient
  g = jnp.where(theta > 0, surrogate.derivative((v - theta) / scale) / scale, jnp.zeros_like(v))
  return _surrogate_fire(surrogate, v, threshold), g * (dv - jnp.asarray(dthreshold, v.dtype))


def _relaxed_fire(surrogate: Surrogate, v, threshold):
  # A smooth function of v and θ: its derivative in θ also has the term of the width θ (which the surrogate
  # gradient, whose width is a fixed shape, leaves out), so finite differences of this model match its jax.grad.
  theta = jnp.asarray(threshold, v.dtype)
  scale = jnp.where(theta > 0, theta, jnp.ones_like(theta))
  return jnp.where(theta > 0, surrogate.step((v - theta) / scale), jnp.zeros_like(v))


def fire(surrogate: Surrogate | None):
  """The firing decision ``fire(v, threshold)`` a neuron's step uses: :func:`exact_fire` (bool) without a
  surrogate, else 0/1 in ``v``'s dtype with the surrogate's derivative (or, for a relaxed surrogate, the smooth step
  itself)."""
  if surrogate is None:
    return exact_fire
  if not isinstance(surrogate, Surrogate):
    raise ValueError(f"jaxsnn: surrogate must be a jaxsnn.surrogates.Surrogate (e.g. jaxsnn.surrogates.sigmoid()); "
                     f"got {surrogate!r}.")
  if surrogate.relaxed:
    return functools.partial(_relaxed_fire, surrogate)
  return functools.partial(_surrogate_fire, surrogate)
