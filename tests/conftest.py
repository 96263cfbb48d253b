"""Helpers shared by the test modules (imported as ``from conftest import ...``; no test module imports another).

* :func:`random_net`: random small Flax ReLU networks for conversion tests (conv blocks with 3x3 / 1x1 kernels,
  strides, SAME / VALID padding, BatchNorm with non-trivial running statistics, optional residual blocks, average or
  max pooling, flatten or global pooling, optional hidden Dense);
* :func:`residual_setup`: one residual conv net with max pooling and its thresholds;
* :func:`dyadic_two_layer`: a two-layer dense net whose inputs, weights and thresholds are dyadic (every current
  exact in float32), with its first layer's current;
* :func:`numpy_neuron_run`: an independent float64 re-statement of IF / SNM neurons with initial potentials;
* :func:`rel_error`, :func:`count_compiles`, :func:`init_params`, :class:`Tiny`, :data:`ROOT`.
"""

from __future__ import annotations

import contextlib
import functools
import pathlib
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxsnn

ROOT = pathlib.Path(__file__).resolve().parents[1]


def rel_error(out, ann) -> float:
  """Max absolute error relative to the ANN's largest magnitude."""
  return float(jnp.abs(out - ann).max() / jnp.abs(ann).max())


@contextlib.contextmanager
def count_compiles():
  """Counts XLA compilations (jax.monitoring's backend compile events) inside the block."""
  events = []

  def listener(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      events.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield events
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def init_params(model, x, seed):
  """Random variables of the model's shapes, drawn in numpy (no compilation: keeps the tests fast)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(0, 0.5, s.shape), s.dtype), shapes)


class Tiny(nn.Module):
  """Dense(8) - ReLU - Dense(3)."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(nn.relu(nn.Dense(8)(x)))


# ---- random architectures ------------------------------------------------------------------------------------------
class Residual(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x):
    y = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(self.features, (3, 3))(x)))
    y = nn.BatchNorm(use_running_average=True)(nn.Conv(self.features, (3, 3))(y))
    return nn.relu(x + y)


class RandomNet(nn.Module):
  blocks: Sequence[tuple]  # (features, kernel, stride, padding, residual, pool)
  head: str  # "flatten" or "gap"
  hidden: int  # 0 for none
  classes: int

  @nn.compact
  def __call__(self, x):
    for features, kernel, stride, padding, residual, pool in self.blocks:
      x = nn.Conv(features, (kernel, kernel), strides=stride, padding=padding)(x)
      x = nn.relu(nn.BatchNorm(use_running_average=True)(x))
      if residual:
        x = Residual(features)(x)
      if pool == "avg":
        x = nn.avg_pool(x, (2, 2), (2, 2))
      elif pool == "max":
        x = nn.max_pool(x, (2, 2), (2, 2))
    x = x.mean(axis=(1, 2)) if self.head == "gap" else x.reshape(x.shape[0], -1)
    if self.hidden:
      x = jax.nn.relu(nn.Dense(self.hidden)(x))
    return nn.Dense(self.classes)(x)


def random_net(seed: int, *, allow_max_pool: bool = False):
  """Returns (apply_fn, variables, inputs) for a random architecture with randomised BatchNorm statistics."""
  rng = np.random.default_rng(seed)
  size = int(rng.choice([6, 8]))
  blocks = []
  for _ in range(int(rng.integers(1, 4))):
    pools = ["none", "avg"] + (["max"] if allow_max_pool else [])
    pool = str(rng.choice(pools)) if size >= 4 else "none"
    stride = int(rng.choice([1, 2])) if size >= 6 and pool == "none" else 1
    kernel = int(rng.choice([1, 3]))
    padding = str(rng.choice(["SAME", "VALID"])) if kernel == 3 and size >= 6 else "SAME"
    blocks.append((int(rng.choice([4, 6, 8])), kernel, stride, padding, bool(rng.random() < 0.4), pool))
    if padding == "VALID":
      size -= 2
    size = -(-size // stride)
    if pool != "none":
      size //= 2
  model = RandomNet(tuple(blocks), head=str(rng.choice(["flatten", "gap"])),
                    hidden=int(rng.choice([0, 16])), classes=int(rng.choice([3, 5])))
  channels = int(rng.choice([1, 3]))
  key = jax.random.PRNGKey(seed)
  x = jax.random.normal(key, (8, 8, 8, channels))
  variables = model.init(jax.random.PRNGKey(seed + 1000), x)
  variables = randomise_batch_stats(variables, rng)
  apply_fn = functools.partial(_apply, model)
  return apply_fn, variables, x


def _apply(model, variables, x):
  return model.apply(variables, x)


def randomise_batch_stats(variables, rng):
  """Non-trivial BatchNorm statistics and affine parameters (means, variances, scales, offsets)."""

  def perturb(path, leaf):
    name = jax.tree_util.keystr(path)
    if "'mean'" in name:
      return jnp.asarray(rng.normal(0.0, 0.3, leaf.shape), leaf.dtype)
    if "'var'" in name:
      return jnp.asarray(rng.uniform(0.3, 2.0, leaf.shape), leaf.dtype)
    if "BatchNorm" in name and "'scale'" in name:
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
    if "BatchNorm" in name and "'bias'" in name:
      return jnp.asarray(rng.normal(0.1, 0.2, leaf.shape), leaf.dtype)
    return leaf

  return jax.tree_util.tree_map_with_path(perturb, variables)


class ResidualConvNet(nn.Module):
  """Convs with BatchNorm, a residual block, max and average pooling, dense layers."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(6, (3, 3))(x)))
    y = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(6, (3, 3))(x)))
    y = nn.BatchNorm(use_running_average=True)(nn.Conv(6, (3, 3))(y))
    x = nn.relu(x + y)
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(8, (3, 3), strides=2)(x))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Dense(12)(x.reshape(x.shape[0], -1)))
    return nn.Dense(4)(x)


@functools.cache
def residual_setup():
  """(apply_fn, variables, x, thresholds) of :class:`ResidualConvNet` on 5 random 8x8x3 inputs."""
  model = ResidualConvNet()
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 8, 8, 3))
  variables = randomise_batch_stats(model.init(jax.random.PRNGKey(1), x), np.random.default_rng(0))
  th = jaxsnn.thresholds(jaxsnn.calibrate(model.apply, variables, [x]))
  return model.apply, variables, x, th


# ---- exact references -----------------------------------------------------------------------------------------------
def numpy_neuron_run(kind, currents, threshold, v0, steps):
  """Independent re-statement of IF / SNM with an initial potential, in float64 (exact on dyadic values): the
  neuron's input is the same current every step. Returns (positive counts, negative counts, summed spikes)."""
  v = np.broadcast_to(np.asarray(v0, np.float64), currents.shape).copy()
  m = np.zeros(currents.shape, np.int64)
  pos = np.zeros(currents.shape, np.int64)
  neg = np.zeros(currents.shape, np.int64)
  out = np.zeros(currents.shape)
  for _ in range(steps):
    v = v + currents
    p = (threshold > 0) & (v >= threshold)
    n = (threshold > 0) & (v <= -threshold) & (m > 0) if kind == "SNM" else np.zeros_like(p)
    s = np.where(p, threshold, np.where(n, -threshold, 0.0))
    v, m = v - s, m + p - n
    pos, neg, out = pos + p, neg + n, out + s
  return pos, neg, out


def dyadic_two_layer(seed=0):
  """``(apply_fn, (w1, b1, w2), x, thresholds, first-layer current)``: every value dyadic, every current exact."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.integers(-8, 9, (6, 4)) / 4, jnp.float32)
  w1 = jnp.asarray(rng.integers(-8, 9, (4, 5)) / 8, jnp.float32)
  b1 = jnp.asarray(rng.integers(-4, 5, (5,)) / 8, jnp.float32)
  w2 = jnp.asarray(rng.integers(-8, 9, (5, 3)) / 8, jnp.float32)
  th = {"relu": jnp.asarray(rng.integers(1, 9, (5,)) / 4, jnp.float32)}
  apply_fn = lambda v, x: jax.nn.relu(x @ v[0] + v[1]) @ v[2]  # noqa: E731
  return apply_fn, (w1, b1, w2), x, th, np.asarray(x @ w1 + b1, np.float64)
