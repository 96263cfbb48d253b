"""Random small Flax ReLU networks for conversion tests.

Each network is drawn from a seed: a stack of conv blocks (3x3 or 1x1 kernels, stride 1 or 2, SAME or VALID padding,
BatchNorm with non-trivial running statistics, optional residual block, optional average or max pooling), then a
flatten or global average pool, an optional hidden Dense + ReLU, and a Dense output.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


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
  for i in range(int(rng.integers(1, 4))):
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
