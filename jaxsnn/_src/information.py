"""Information loss of rate coding (paper Eq. 12-13) and the Fig. 3 surface: pure, jit-able, differentiable."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxsnn._src import checks
from jaxsnn._src.norms import normalize

REDUCTIONS = ("sum", "mean", "none")


def information_loss(activations, threshold, num_steps, alpha=1.0, reduction: str = "sum",
                     temperature: float = 0.0) -> jax.Array:
  """Information lost at one site when ReLU activations are rate-coded with threshold ``alpha * threshold`` in T steps.

  With threshold ``l = alpha * lambda`` and T steps, a neuron can send at most T spikes of amplitude ``l``, so it
  represents values in ``[l / T, l]``: an activation below ``l / T`` cannot make a single spike and is lost entirely,
  and the part of an activation above ``l`` is clipped (paper Eq. 12; with per-neuron ``lambda``, Eq. 13)::

      loss = sum_i  a_i * [a_i < l_i / T]  +  max(a_i - l_i, 0)

  Pure and jit-able. It is piecewise linear in ``alpha`` and ``threshold``, so ``jax.grad`` gives the exact
  derivative everywhere except at the kinks ``a_i = l_i / T`` and ``a_i = l_i`` (a set of measure zero): the clipping
  term contributes ``-sum_{a_i > l_i} lambda_i`` to d/d alpha, the loss-below term is locally constant.

  Args:
    activations: ANN activations (``>= 0``) of the site, e.g. ``[batch, *site_shape]``.
    threshold: ``lambda``, broadcastable to ``activations`` from the right: a scalar (LayerNorm) or the site's shape
      (NeuronNorm / channel norm).
    num_steps: T (an int, or a float array for grids).
    alpha: scale of the threshold (the paper's alpha).
    reduction: ``"sum"`` (the paper's sum over neurons and inputs), ``"mean"``, or ``"none"`` (per element).
    temperature: 0 for the exact loss. A positive value replaces the step ``[a_i < l_i / T]`` by the sigmoid
      ``sigmoid((l_i / T - a_i) / (temperature * l_i / T))``, a relaxation whose gradient also sees the loss below
      ``l / T`` (useful to optimise alpha or thresholds by gradient descent); it tends to the exact loss as the
      temperature goes to 0.

  Returns:
    The loss (a scalar unless ``reduction="none"``).

  Raises:
    ValueError: for an unknown reduction.

  Example:
    >>> loss = information_loss(acts[site], stats.max[site], 32, alpha=0.5)
    >>> dloss_dalpha = jax.grad(information_loss, argnums=3)(acts[site], stats.max[site], 32, 0.5)
  """
  if reduction not in REDUCTIONS:
    raise ValueError(f"jaxsnn.information_loss: reduction must be one of {REDUCTIONS}; got {reduction!r}.")
  if not temperature >= 0:
    raise ValueError(f"jaxsnn.information_loss: temperature must be >= 0; got {temperature!r}.")
  a = jnp.asarray(activations)
  level = alpha * jnp.asarray(threshold)
  if temperature:
    step = level / num_steps
    width = temperature * step
    # A dead neuron (threshold 0) loses its whole activation to the clipping term, as in the exact loss; the double
    # where keeps the gradient finite there (the divisor's derivative would be 0 / 0).
    live = width > 0
    safe = jnp.where(live, width, 1)
    below = jnp.where(live, jax.nn.sigmoid((step - a) / safe), 0.0)
    lost_below = a * below
  else:
    lost_below = jnp.where(a < level / num_steps, a, jnp.zeros_like(a))
  clipped = jnp.maximum(a - level, 0)
  loss = lost_below + clipped
  if reduction == "sum":
    return loss.sum()
  if reduction == "mean":
    return loss.mean()
  return loss


def information_loss_surface(activations, neuron_max, alphas, num_steps_grid,
                             granularities: Sequence[str] = ("layer", "neuron"), reduction: str = "sum") -> dict:
  """The paper's Fig. 3: information loss of one site over a grid of (alpha, T), per threshold granularity.

  Thresholds come from the per-neuron maxima ``neuron_max`` (``Stats.max[site]``, from training data) at each
  granularity (``"layer"``: the site's max for every neuron, LayerNorm; ``"channel"``; ``"neuron"``: each neuron's
  own max, NeuronNorm), as :func:`jaxsnn.thresholds` makes them; the loss is :func:`information_loss` of
  ``activations`` (the site's activations over a set of inputs). Jit-able; evaluates the grid one point at a time
  (``lax.map``), so memory stays at one activation tensor.

  Args:
    activations: ``[batch, *site_shape]`` activations of the site.
    neuron_max: ``[*site_shape]`` per-neuron maxima.
    alphas: 1-D array of alpha values.
    num_steps_grid: 1-D array of T values.
    granularities: which granularities to compute (the default: the paper's LayerNorm vs NeuronNorm).
    reduction: as in :func:`information_loss`, but not ``"none"``.

  Returns:
    ``{granularity: [len(alphas), len(num_steps_grid)]}``.

  Raises:
    ValueError: for an unknown granularity or reduction.

  Example:
    >>> surf = information_loss_surface(acts[site], stats.max[site], jnp.linspace(0.1, 1, 10), jnp.arange(1, 65))
  """
  caller = "jaxsnn.information_loss_surface"
  for granularity in granularities:
    checks.granularity(granularity, caller)
  if reduction not in ("sum", "mean"):
    raise ValueError(f"{caller}: reduction must be 'sum' or 'mean'; got {reduction!r}.")
  alphas = jnp.asarray(alphas, jnp.float32)
  grid = jnp.asarray(num_steps_grid, jnp.float32)
  if alphas.ndim != 1 or grid.ndim != 1:
    raise ValueError(f"{caller}: alphas and num_steps_grid must be 1-D; got shapes {alphas.shape} and {grid.shape}.")
  if np.shape(neuron_max) != np.shape(activations)[1:]:
    raise ValueError(f"{caller}: neuron_max has shape {np.shape(neuron_max)} but activations are "
                     f"{np.shape(activations)} ([batch, *site_shape]).")
  grid_a, grid_t = jnp.meshgrid(alphas, grid, indexing="ij")
  out = {}
  for granularity in granularities:
    th = normalize(neuron_max, granularity)
    flat = jax.lax.map(lambda at: information_loss(activations, th, at[1], at[0], reduction),
                       jnp.stack([grid_a.ravel(), grid_t.ravel()], axis=1))
    out[granularity] = flat.reshape(grid_a.shape)
  return out
