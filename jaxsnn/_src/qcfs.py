"""The quantization-clip-floor-shift (QCFS) activation of Bu et al. (ICLR 2022), as a primitive of jaxsnn's own.

``qcfs(z, threshold, levels) = threshold * clip(floor(z * levels / threshold + 1/2) / levels, 0, 1)``

An ANN trained with it in place of ReLU converts to IF (or SNM) neurons with threshold ``threshold`` and initial
potential ``threshold / 2`` with zero expected conversion error (QCFS Theorem 2), and at ``T = levels`` steps from a
constant input current the neuron's spike count is exactly the ANN's level.

Why a primitive: the converter must recognise the activation without guessing from a pattern of floor/clip ops (a
user's own quantiser must never be mistaken for it, and a change in how jnp lowers ``clip`` must never hide it). The
primitive ``jaxsnn_qcfs`` appears as one equation in the traced jaxpr; the rewrite matches it by identity
(``jaxsnn._src.ir``). Its gradient is the straight-through estimator for the floor (d floor(u)/du = 1), given by a
``jax.custom_jvp`` around the primitive, so weights and thresholds train with ``jax.grad`` and optax as usual.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.extend import core as jcore
from jax.interpreters import batching, mlir

from jaxsnn._src import checks

qcfs_p = jcore.Primitive("jaxsnn_qcfs")


def _reference(z, threshold, *, levels: int):
  """The activation in plain jnp ops (the primitive's implementation and lowering)."""
  step = jnp.floor(z * (levels / threshold) + 0.5)
  return jnp.clip(step, 0, levels) * (threshold / levels)


def _abstract_eval(z, threshold, *, levels: int):
  if not jnp.issubdtype(z.dtype, jnp.floating):
    raise TypeError(f"jaxsnn.qcfs: the input must be floating point; got {z.dtype}.")
  if threshold.dtype != z.dtype:
    raise TypeError(f"jaxsnn.qcfs: the threshold's dtype {threshold.dtype} differs from the input's {z.dtype}; "
                    "cast it (QCFS does this for you).")
  # Broadcasts to the input's shape (compared dimension by dimension, so that a symbolic batch size traces too).
  fits = threshold.ndim <= z.ndim and all(
      t == 1 or t == d for t, d in zip(threshold.shape[::-1], z.shape[::-1]))
  if not fits:
    raise TypeError(f"jaxsnn.qcfs: a threshold of shape {threshold.shape} does not broadcast to the input's "
                    f"shape {z.shape}.")
  return jax.core.ShapedArray(z.shape, z.dtype)


def _batch(args, dims, *, levels: int):
  z, threshold = args
  zd, td = dims
  if td is None:
    return qcfs_p.bind(z, threshold, levels=levels), zd
  size = threshold.shape[td]
  threshold = jnp.moveaxis(threshold, td, 0)
  z = jnp.moveaxis(z, zd, 0) if zd is not None else jnp.broadcast_to(z, (size,) + z.shape)
  # Right-align the threshold's own axes with the input's, behind the batch axis.
  threshold = threshold.reshape((size,) + (1,) * (z.ndim - threshold.ndim) + threshold.shape[1:])
  return qcfs_p.bind(z, threshold, levels=levels), 0


qcfs_p.def_impl(_reference)
qcfs_p.def_abstract_eval(_abstract_eval)
batching.primitive_batchers[qcfs_p] = _batch
mlir.register_lowering(qcfs_p, mlir.lower_fun(_reference, multiple_results=False))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _qcfs(z, threshold, levels):
  return qcfs_p.bind(z, threshold, levels=levels)


@_qcfs.defjvp
def _qcfs_jvp(levels, primals, tangents):
  z, threshold = primals
  dz, dthreshold = tangents
  y = _qcfs(z, threshold, levels)
  step = jnp.floor(z * (levels / threshold) + 0.5)
  inside = ((step >= 0) & (step <= levels)).astype(z.dtype)  # where clip passes its gradient
  # Straight-through floor: d step / dz = levels / threshold, d step / d threshold = -z levels / threshold**2.
  dy = inside * dz + (jnp.clip(step, 0, levels) / levels - inside * z / threshold) * dthreshold
  return y, dy


def qcfs(z, threshold, levels: int):
  """The QCFS activation ``threshold * clip(floor(z * levels / threshold + 1/2) / levels, 0, 1)``.

  Args:
    z: pre-activation (floating point).
    threshold: lambda, broadcastable to ``z`` (a scalar per layer in :class:`jaxsnn.models.QCFS`); positive.
    levels: L >= 1, the number of quantisation levels above zero.

  Returns:
    An array like ``z``. Its gradient is straight-through for the floor: 1 w.r.t. ``z`` inside the clip range, and
    ``clip(...) / L - z / threshold`` (inside) or ``clip(...) / L`` (outside) w.r.t. the threshold.

  Raises:
    ValueError: if ``levels`` is not a positive int.
  """
  levels = checks.positive_int(levels, "levels", "jaxsnn.qcfs")
  z = jnp.asarray(z)
  return _qcfs(z, jnp.asarray(threshold, z.dtype), levels)
