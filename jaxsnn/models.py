"""Flax (linen) models that jaxsnn converts: VGG, ResNet and a small CNN for 28×28 inputs.

Every model takes its activation as an injected argument (default ``nn.relu``) and uses BatchNorm with
``use_running_average=not train``, so that ``model.apply(variables, x, train=False)`` is a pure ReLU network
made of the affine ops the converter understands (conv, dense, BatchNorm in eval mode, average pooling,
residual add, flatten). There is no max pooling and no dropout. Inputs are NHWC.

Presets are ``functools.partial`` objects::

    model = VGG16(num_classes=10, width=0.25)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    logits = model.apply(variables, x, train=False)

``width`` multiplies every hidden channel count (convolutions and hidden dense layers); counts are rounded
and never fall below 1.

``act`` is any function ``x -> y``, called inside the model's compact method, so it may create Flax modules:
``act=qcfs_activation(levels=4)`` gives every activation site its own :class:`QCFS` module with its own trainable
threshold (Bu et al., ICLR 2022), which the converter recognises as a neuron site with that threshold.

``conv`` is the convolution module; pass ``partial(nn.Conv, conv_general_dilated=conv_im2col_grad)`` to train
with the faster weight gradient on CPU (same parameters, same outputs; convert with the plain model).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence, Union

import jax
import jax.numpy as jnp
from jax import lax
import flax.linen as nn

from jaxsnn._src import checks, lowering
from jaxsnn._src.lowering import im2col
from jaxsnn._src.qcfs import qcfs

__all__ = ["Activation", "BasicBlock", "FastConv", "LayerSpec", "MODELS", "QCFS", "ResNet", "ResNet18", "ResNet20",
           "SMALL_CNN_CONFIG", "SmallCNN", "VGG", "VGG11", "VGG11_CONFIG", "VGG16", "VGG16_CONFIG", "avg_pool",
           "conv_im2col_grad", "get_model", "im2col", "qcfs_activation", "scale_width"]

ModuleDef = Any
Activation = Callable[[jax.Array], jax.Array]
"""An activation function ``x -> y`` for the models' ``act=`` argument (``nn.relu``, :func:`qcfs_activation`)."""

LayerSpec = Union[int, tuple, str]
"""A VGG layer spec: an int is a 3×3 conv with that many channels (padding 1), ``(c, 1)`` a 1×1 conv
(padding 0), ``"P"`` a 2×2 average pool with stride 2."""

VGG11_CONFIG: tuple = (64, "P", 128, "P", 256, 256, "P", 512, 512, "P", 512, 512, "P")
"""Config A of Simonyan & Zisserman with average pooling (:data:`LayerSpec` entries)."""
VGG16_CONFIG: tuple = (64, 64, "P", 128, 128, "P", 256, 256, (256, 1), "P",
                       512, 512, (512, 1), "P", 512, 512, (512, 1), "P")
"""Config C of Simonyan & Zisserman, the authors' "VGG16": the third conv of stages 3-5 is 1×1."""
SMALL_CNN_CONFIG: tuple = (32, 32, "P", 64, 64, "P")
"""conv32-conv32-pool-conv64-conv64-pool, the convolutional part of :data:`SmallCNN`."""


def scale_width(channels: int, width: float) -> int:
  """Returns ``round(channels * width)``, at least 1."""
  return max(1, int(round(channels * width)))


def avg_pool(x: jax.Array) -> jax.Array:
  """2×2 average pooling with stride 2 (NHWC)."""
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


class QCFS(nn.Module):
  """The quantization-clip-floor-shift activation (Bu et al., ICLR 2022) with one trainable threshold per layer.

  ``y = lambda * clip(floor(x * levels / lambda + 1/2) / levels, 0, 1)``, with the straight-through gradient for the
  floor, so ``lambda`` (the parameter ``"threshold"``, a float32 scalar) trains with the weights. ``jaxsnn.convert``
  turns it into a neuron site with threshold ``lambda`` and initial potential ``lambda / 2``; at ``T = levels`` steps
  the SNN then reproduces the activation exactly.

  Attributes:
    levels: L, the number of quantisation levels above zero (the paper uses 4 on CIFAR-10 for the SNN at T = 4-8).
    init_threshold: initial lambda (8.0 in the paper's code).
  """
  levels: int
  init_threshold: float = 8.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    threshold = self.param("threshold", nn.initializers.constant(self.init_threshold), (), jnp.float32)
    return qcfs(x, threshold.astype(x.dtype), self.levels)


def qcfs_activation(levels: int, init_threshold: float = 8.0) -> Activation:
  """An activation for the models' ``act=`` argument: a new :class:`QCFS` module (own threshold) at every use.

  Example:
    >>> model = ResNet20(num_classes=10, act=qcfs_activation(levels=4))
  """
  levels = checks.positive_int(levels, "levels", "jaxsnn.models.qcfs_activation")
  if not init_threshold > 0:
    raise ValueError(f"qcfs_activation: init_threshold must be > 0; got {init_threshold!r}.")
  return _QCFSActivation(levels, float(init_threshold))


@dataclasses.dataclass(frozen=True)
class _QCFSActivation:
  """Callable that creates a :class:`QCFS` in the calling module's scope (see :func:`qcfs_activation`)."""
  levels: int
  init_threshold: float

  def __call__(self, x: jax.Array) -> jax.Array:
    return QCFS(self.levels, self.init_threshold)(x)


class VGG(nn.Module):
  """VGG-style network: conv(+BN+act) stages with average pooling, then flatten and a dense head.

  Attributes:
    config: layer specs (see ``LayerSpec``).
    head: hidden dense widths before the classifier (ReLU, no BN), scaled by ``width``.
    num_classes: output logits.
    width: channel multiplier for convs and hidden dense layers.
    act: activation after every BN and every hidden dense layer.
    conv: convolution module constructor.
    dtype: computation dtype.
  """
  config: Sequence[LayerSpec] = VGG16_CONFIG
  head: Sequence[int] = (4096, 4096)
  num_classes: int = 10
  width: float = 1.0
  act: Activation = nn.relu
  conv: ModuleDef = nn.Conv
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             dtype=self.dtype)
    for spec in self.config:
      if spec == "P":
        x = avg_pool(x)
        continue
      channels, kernel = (spec, 3) if isinstance(spec, int) else spec
      pad = (kernel - 1) // 2
      x = self.conv(scale_width(channels, self.width), (kernel, kernel), padding=[(pad, pad)] * 2,
                    dtype=self.dtype)(x)
      x = self.act(norm()(x))
    x = x.reshape((x.shape[0], -1))
    for features in self.head:
      x = self.act(nn.Dense(scale_width(features, self.width), dtype=self.dtype)(x))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


class BasicBlock(nn.Module):
  """ResNet basic block: conv-BN-act-conv-BN, plus shortcut, then act.

  The shortcut is the identity, or a 1×1 conv + BN projection when the shape changes (option B).
  """
  features: int
  strides: int = 1
  act: Activation = nn.relu
  conv: ModuleDef = nn.Conv
  norm: ModuleDef = nn.BatchNorm

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.conv(self.features, (3, 3), (self.strides, self.strides), padding=[(1, 1)] * 2,
                  use_bias=False)(x)
    y = self.act(self.norm()(y))
    y = self.conv(self.features, (3, 3), padding=[(1, 1)] * 2, use_bias=False)(y)
    y = self.norm()(y)
    if x.shape != y.shape:
      x = self.conv(self.features, (1, 1), (self.strides, self.strides), padding="VALID",
                    use_bias=False)(x)
      x = self.norm()(x)
    return self.act(x + y)


class ResNet(nn.Module):
  """ResNet with the CIFAR stem (one 3×3 conv, stride 1, no pooling) and global average pooling.

  Attributes:
    stage_sizes: blocks per stage; every stage after the first halves the resolution.
    stage_widths: channels per stage (before ``width``).
    stem_width: channels of the stem conv (before ``width``).
    num_classes: output logits.
    width: channel multiplier.
    act: activation.
    conv: convolution module constructor.
    dtype: computation dtype.
  """
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  stage_widths: Sequence[int] = (64, 128, 256, 512)
  stem_width: int = 64
  num_classes: int = 10
  width: float = 1.0
  act: Activation = nn.relu
  conv: ModuleDef = nn.Conv
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if len(self.stage_sizes) != len(self.stage_widths):
      raise ValueError(f"ResNet: stage_sizes {tuple(self.stage_sizes)} and stage_widths "
                       f"{tuple(self.stage_widths)} differ in length")
    conv = functools.partial(self.conv, dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             dtype=self.dtype)
    x = conv(scale_width(self.stem_width, self.width), (3, 3), padding=[(1, 1)] * 2, use_bias=False)(x)
    x = self.act(norm()(x))
    for i, (blocks, features) in enumerate(zip(self.stage_sizes, self.stage_widths)):
      for j in range(blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = BasicBlock(scale_width(features, self.width), strides, act=self.act, conv=conv, norm=norm)(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


VGG11 = functools.partial(VGG, config=VGG11_CONFIG, head=(4096, 4096))
"""VGG-11 (config A, average pooling) with the head FC 512→4096→4096→classes: ``VGG11(num_classes=10)``."""
VGG16 = functools.partial(VGG, config=VGG16_CONFIG, head=(4096, 4096))
"""VGG-16 as in the authors' code (config C: 1×1 convs, average pooling), head FC 512→4096→4096→classes."""
SmallCNN = functools.partial(VGG, config=SMALL_CNN_CONFIG, head=(256,))
"""conv32-conv32-pool-conv64-conv64-pool-dense256 for 28×28 inputs (Fashion-MNIST, MNIST)."""
ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), stage_widths=(64, 128, 256, 512), stem_width=64)
"""ResNet-18 with the CIFAR stem (3×3 conv, no pooling): basic blocks 2-2-2-2, widths 64-128-256-512."""
ResNet20 = functools.partial(ResNet, stage_sizes=(3, 3, 3), stage_widths=(16, 32, 64), stem_width=16)
"""ResNet-20 for CIFAR: basic blocks 3-3-3, widths 16-32-64."""

MODELS: dict[str, Callable[..., nn.Module]] = {
    "vgg11": VGG11, "vgg16": VGG16, "small_cnn": SmallCNN, "resnet18": ResNet18, "resnet20": ResNet20,
}
"""The presets by name, as :func:`get_model` and the training configs' ``model`` field take them."""


def get_model(name: str, **kwargs) -> nn.Module:
  """Builds a preset by name (``vgg11``, ``vgg16``, ``small_cnn``, ``resnet18``, ``resnet20``).

  Raises:
    ValueError: for an unknown name.
  """
  if name not in MODELS:
    raise ValueError(f"get_model: unknown model {name!r}; choose one of {sorted(MODELS)}")
  return MODELS[name](**kwargs)


# --- A convolution whose weight gradient is im2col + one matmul -------------------------------------------
#
# XLA:CPU computes convolution weight gradients far slower than forward convolutions or matmuls. This
# drop-in replacement for lax.conv_general_dilated (the subset flax's nn.Conv uses for NHWC/HWIO, no
# groups, no input dilation) keeps the forward conv and the input gradient as convs, and computes the
# weight gradient as patches^T @ cotangent.

_NHWC = ("NHWC", "HWIO", "NHWC")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_nhwc(x, w, strides, padding, dilation):
  return lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=_NHWC)


def _conv_nhwc_fwd(x, w, strides, padding, dilation):
  return _conv_nhwc(x, w, strides, padding, dilation), (x, w)


def _conv_nhwc_bwd(strides, padding, dilation, res, g):
  x, w = res
  _, input_vjp = jax.vjp(
      lambda x_: lax.conv_general_dilated(x_, w, strides, padding, rhs_dilation=dilation,
                                          dimension_numbers=_NHWC), x)
  (dx,) = input_vjp(g)
  kh, kw, c, o = w.shape
  patches = lowering.im2col(x, (kh, kw), strides, padding, dilation, g.shape[1:3])
  dw = jnp.dot(patches.reshape(-1, kh * kw * c).T, g.reshape(-1, o),
               preferred_element_type=jnp.float32).reshape(w.shape).astype(w.dtype)
  return dx, dw


_conv_nhwc.defvjp(_conv_nhwc_fwd, _conv_nhwc_bwd)


def conv_im2col_grad(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                     dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
  """``lax.conv_general_dilated`` with an im2col + matmul weight gradient, for flax's ``nn.Conv``.

  Same values and gradients as ``lax.conv_general_dilated``; falls back to it for layouts or options
  the fast path does not cover (grouped or input-dilated convs, non-NHWC layouts).

  Example::

    conv = functools.partial(nn.Conv, conv_general_dilated=conv_im2col_grad)
    model = SmallCNN(conv=conv)
  """
  ndims = lhs.ndim
  dims_ok = dimension_numbers is None and ndims == 4 or (
      isinstance(dimension_numbers, lax.ConvDimensionNumbers)
      and dimension_numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))
  lhs_dilation = tuple(lhs_dilation or (1,) * (ndims - 2))
  rhs_dilation = tuple(rhs_dilation or (1,) * (ndims - 2))
  if not dims_ok or feature_group_count != 1 or any(d != 1 for d in lhs_dilation) or kwargs:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, precision=precision, **kwargs)
  if not isinstance(padding, str):
    padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  return _conv_nhwc(lhs, rhs, tuple(window_strides), padding, rhs_dilation)


FastConv = functools.partial(nn.Conv, conv_general_dilated=conv_im2col_grad)
"""``nn.Conv`` with the im2col weight gradient (:func:`conv_im2col_grad`). One shared object, so that equal models
compare (and hash) equal and jitted training steps are reused across runs."""
