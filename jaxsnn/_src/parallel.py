"""Data parallelism over the local devices: batches sharded over a mesh's batch axis, everything else replicated.

``calibrate``, ``calibrate_snn`` and ``evaluate`` run every batch sharded over all local devices by default (a 1-D
mesh named ``"batch"``), or over the ``mesh`` they are given. A batch that does not divide by the number of devices
is padded with zeros and the padding masked out, so results are unchanged; the networks' parameters are replicated.
Maxima and counts reduce across devices inside the same jitted programs (XLA inserts the collectives), so the results
equal a single device's bit for bit wherever the per-device kernels compute the same values as the whole batch's
(tested on CPU). An input that is already sharded (e.g. under ``jax.set_mesh`` with explicit axes) is used as it is.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH = "batch"


def user_mesh() -> bool:
  """Whether the caller runs under a mesh of their own (``jax.set_mesh``): inputs are then used as they are."""
  return not jax.sharding.get_abstract_mesh().empty


def batch_mesh(mesh: Mesh | None, caller: str) -> Mesh | None:
  """The mesh to shard batches over: ``mesh`` (its ``"batch"`` axis, or its only axis), else all local devices
  (None when there is just one, or when a mesh is set with ``jax.set_mesh``: inputs are then used as they are)."""
  if mesh is None:
    if user_mesh():
      return None  # the caller runs under its own mesh (jax.set_mesh) and shards the inputs itself
    devices = jax.local_devices()
    return None if len(devices) == 1 else Mesh(np.asarray(devices), (BATCH,))
  if not isinstance(mesh, Mesh):
    raise ValueError(f"{caller}: mesh must be a jax.sharding.Mesh; got {type(mesh).__name__}.")
  if BATCH not in mesh.axis_names and len(mesh.axis_names) != 1:
    raise ValueError(f"{caller}: the mesh has axes {mesh.axis_names}; name its batch axis {BATCH!r} (or give a 1-D "
                     "mesh).")
  return mesh


def _axis(mesh: Mesh) -> str:
  return BATCH if BATCH in mesh.axis_names else mesh.axis_names[0]


def _already_sharded(x) -> bool:
  leaves = jax.tree_util.tree_leaves(x)
  return any(isinstance(a, jax.Array) and len(a.sharding.device_set) > 1 for a in leaves)


def padded_size(mesh: Mesh | None, size: int) -> int:
  if mesh is None:
    return size
  n = mesh.shape[_axis(mesh)]
  return -(-size // n) * n


def pad(tree, size: int, fill=0):
  """Pads every leaf's leading axis to ``size`` with ``fill``."""
  def one(a):
    a = np.asarray(a) if not isinstance(a, jax.Array) else a
    extra = size - a.shape[0]
    if extra <= 0:
      return a
    xp = jnp if isinstance(a, jax.Array) else np
    return xp.concatenate([a, xp.full((extra,) + a.shape[1:], fill, a.dtype)])
  return jax.tree_util.tree_map(one, tree)


def shard_batch(mesh: Mesh | None, *trees) -> tuple:
  """Pads ``trees`` (same batch size) to a multiple of the mesh's batch axis and shards them over it.

  The caller pads masks with False (``pad(mask, size, False)``) before; here every tree is padded with zeros.
  With no mesh, or an input already sharded over several devices, returns the trees unchanged.
  """
  if mesh is None or _already_sharded(trees[0]):
    return trees
  size = int(np.shape(jax.tree_util.tree_leaves(trees[0])[0])[0])
  target = padded_size(mesh, size)
  sharding = NamedSharding(mesh, PartitionSpec(_axis(mesh)))
  return tuple(jax.device_put(pad(t, target), sharding) for t in trees)


def replicate(mesh: Mesh | None, tree: Any) -> Any:
  """Every leaf of ``tree`` on every device of the mesh (unchanged without a mesh)."""
  if mesh is None:
    return tree
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
