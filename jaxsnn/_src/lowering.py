"""Convolutions as im2col + one matmul: for weight gradients (training, and gradients through the simulated SNN) and
the simulator's tiny convolutions.

XLA:CPU runs a convolution with few output positions far slower than the same product as a matmul (measured on 2
cores, batch 128, 3x3 kernel, 2x2x128 -> 128: 9.8 ms as a convolution, 1.0 ms as im2col + matmul; from 4x4 on its
own kernel is the faster one; ``benchmarks/conv_lowering.py``, ``benchmarks/RESULTS.md``). VGG16's last stage runs
on 2x2 maps, so the simulator lowers such convolutions (:func:`contract`) on CPU.
"""
from __future__ import annotations

import functools

import jax
import numpy as np
from jax import lax

# The simulator runs a convolution as im2col + matmul on CPU when its output has at most this many positions per
# image (H' * W'): 2x2 maps measured 9.6x faster that way, 4x4 maps 1.5-2.6x slower.
SMALL_CONV_POSITIONS = 4

_NHWC_SPECS = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))  # lhs NHWC, rhs HWIO, out NHWC


def im2col(x: jax.Array, kernel_hw: tuple, strides: tuple, padding, dilation: tuple, out_hw: tuple) -> jax.Array:
  """Patches [N, H', W', kh*kw*C] of an NHWC input, in (kh, kw, C) order: an HWIO kernel reshaped to
  [kh*kw*C, O] contracts with them into the convolution's output (how the fast-gradient convolution of training
  and the simulator's small convolutions on CPU run a convolution as one matmul).

  Args:
    x: the input, NHWC.
    kernel_hw: the kernel's (height, width).
    strides: the convolution's strides.
    padding: ``"SAME"``, ``"VALID"`` or ``((top, bottom), (left, right))``.
    dilation: the kernel's dilation.
    out_hw: the output's (height, width).

  Returns:
    The patches.

  Example:
    >>> patches = jaxsnn.models.im2col(jnp.ones((2, 8, 8, 3)), (3, 3), (1, 1), "SAME", (1, 1), (8, 8))
    >>> patches.shape
    (2, 8, 8, 27)
  """
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], [(k - 1) * d + 1 for k, d in zip(kernel_hw, dilation)],
                                  strides, padding)
  x = jax.numpy.pad(x, [(0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)])
  cols = []
  for i in range(kernel_hw[0]):
    for j in range(kernel_hw[1]):
      h0, w0 = i * dilation[0], j * dilation[1]
      cols.append(lax.slice(x, (0, h0, w0, 0),
                            (x.shape[0], h0 + strides[0] * (out_hw[0] - 1) + 1,
                             w0 + strides[1] * (out_hw[1] - 1) + 1, x.shape[3]),
                            (1, strides[0], strides[1], 1)))
  return jax.numpy.concatenate(cols, axis=-1)


def _lowerable(params: dict, lhs, rhs) -> bool:
  dn = params["dimension_numbers"]
  specs = (tuple(dn.lhs_spec), tuple(dn.rhs_spec), tuple(dn.out_spec)) if dn is not None else None
  return (specs == _NHWC_SPECS and lhs.ndim == 4 and rhs.ndim == 4
          and all(d == 1 for d in params["lhs_dilation"])
          and params["feature_group_count"] == 1 and params["batch_group_count"] == 1)


def _out_hw(lhs, rhs, params: dict) -> tuple:
  strides, pads, dil = params["window_strides"], params["padding"], params["rhs_dilation"]
  return tuple((lhs.shape[1 + a] + pads[a][0] + pads[a][1] - (rhs.shape[a] - 1) * dil[a] - 1) // strides[a] + 1
               for a in range(2))


def conv_as_matmul(lhs, rhs, params: dict) -> jax.Array:
  """``lax.conv_general_dilated_p.bind(lhs, rhs, **params)`` for NHWC / HWIO / NHWC as im2col + one matmul."""
  kh, kw, cin, cout = rhs.shape
  out_hw = _out_hw(lhs, rhs, params)
  patches = im2col(lhs, (kh, kw), params["window_strides"], params["padding"], params["rhs_dilation"], out_hw)
  out = lax.dot_general(patches.reshape(-1, kh * kw * cin), rhs.reshape(kh * kw * cin, cout),
                        (((1,), (0,)), ((), ())), precision=params.get("precision"),
                        preferred_element_type=params.get("preferred_element_type"))
  return out.reshape((lhs.shape[0],) + out_hw + (cout,))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(lhs, rhs, params: tuple):
  return lax.conv_general_dilated_p.bind(lhs, rhs, **dict(params))


def _conv_fwd(lhs, rhs, params):
  return _conv(lhs, rhs, params), (lhs, rhs)


def _input_gradient(g, rhs, lhs_hw: tuple, kwargs: dict):
  """The input gradient of an NHWC / HWIO convolution, as a convolution of the cotangent with the kernel flipped
  and transposed into HWIO itself: the same values as ``jax.vjp``'s, whose kernel layout (in and out swapped) XLA:CPU
  runs ~20x slower inside a loop."""
  strides, pads, dilation = kwargs["window_strides"], kwargs["padding"], kwargs["rhs_dilation"]
  if isinstance(pads, str):
    pads = lax.padtype_to_pads(lhs_hw, [(k - 1) * d + 1 for k, d in zip(rhs.shape[:2], dilation)], strides, pads)
  padding = []
  for a in range(2):
    k = (rhs.shape[a] - 1) * dilation[a] + 1
    out = (g.shape[1 + a] - 1) * strides[a] + 1
    before = k - pads[a][0] - 1
    padding.append((before, lhs_hw[a] + k - 1 - out - before))
  kernel = jax.numpy.flip(rhs, (0, 1)).swapaxes(2, 3)
  return lax.conv_general_dilated(g, kernel, (1, 1), padding, lhs_dilation=strides, rhs_dilation=dilation,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=kwargs.get("precision"),
                                  preferred_element_type=kwargs.get("preferred_element_type"))


def _conv_bwd(params, res, g):
  lhs, rhs = res
  kwargs = dict(params)
  dlhs = _input_gradient(g, rhs, lhs.shape[1:3], kwargs).astype(lhs.dtype)
  kh, kw, cin, cout = rhs.shape
  patches = im2col(lhs, (kh, kw), kwargs["window_strides"], kwargs["padding"], kwargs["rhs_dilation"], g.shape[1:3])
  drhs = lax.dot_general(patches.reshape(-1, kh * kw * cin), g.reshape(-1, cout), (((0,), (0,)), ((), ())),
                         preferred_element_type=jax.numpy.float32)
  return dlhs, drhs.reshape(rhs.shape).astype(rhs.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_with_matmul_grad(lhs, rhs, params: dict) -> jax.Array:
  """``lax.conv_general_dilated_p.bind(lhs, rhs, **params)`` (the same forward op, bit for bit) whose weight gradient
  is im2col + one matmul: XLA:CPU's own weight-gradient convolution runs ~7x slower inside a loop (the simulator's
  time scan; measured on the Fashion-MNIST CNN, 2.5 s against 0.38 s for a 4-step gradient), for NHWC / HWIO
  convolutions without input dilation or groups."""
  return _conv(lhs, rhs, tuple(sorted(params.items())))


def contract(op, args) -> tuple:
  """``op.bind(*args)``, except on the CPU for NHWC / HWIO convolutions without input dilation or groups: a small one
  (at most :data:`SMALL_CONV_POSITIONS` output positions per image) runs as im2col + matmul, and every other one as
  the same convolution whose weight gradient (if one is taken) is im2col + matmul (:func:`conv_with_matmul_grad`)."""
  if op.prim is lax.conv_general_dilated_p and jax.default_backend() == "cpu" and _lowerable(op.params, *args):
    if np.prod(_out_hw(*args, op.params)) <= SMALL_CONV_POSITIONS:
      return (conv_as_matmul(*args, op.params),)
    return (conv_with_matmul_grad(*args, op.params),)
  return op.bind(*args)
