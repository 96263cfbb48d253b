"""Tests for jaxsnn.models: parameter counts, shapes, injected activation, fast conv, conversion."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxsnn
from jaxsnn import models


def count_params(model, shape):
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), jnp.zeros(shape))
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))


def random_variables(model, shape, seed=0):
  """Random variables without running ``model.init`` (eager init compiles an RNG kernel per weight shape)."""
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), jnp.zeros(shape))
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = jax.tree_util.keystr(path)
    if name.endswith("['kernel']"):
      return rng.normal(0, 1 / np.sqrt(np.prod(s.shape[:-1])), s.shape).astype(s.dtype)
    if name.endswith("['scale']"):
      return rng.uniform(0.5, 1.5, s.shape).astype(s.dtype)
    if name.endswith("['var']"):
      return np.ones(s.shape, s.dtype)
    if name.endswith("['mean']"):
      return np.zeros(s.shape, s.dtype)
    return rng.normal(0, 0.1, s.shape).astype(s.dtype)  # biases

  return jax.tree_util.tree_map_with_path(fill, shapes)


# Hand-computed counts. conv(ci, co, k) = ci*co*k*k (+ co bias) + 2*co (BN scale, bias); dense(i, o) = i*o + o.
# VGG16 (config C, conv bias): 3→64, 64→64, 64→128, 128→128, 128→256, 256→256, 256→256 (1×1), 256→512,
#   512→512, 512→512 (1×1), 512→512, 512→512, 512→512 (1×1); head dense(512,4096)+dense(4096,4096)+dense(4096,10).
# ResNet (no conv bias, projection shortcut = 1×1 conv + BN where the shape changes), dense(width, classes).
@pytest.mark.parametrize("preset, kwargs, shape, expected", [
    # 320 + 9248 + 18496 + 36928 (convs) + 384 (BN) + 803072 (3136*256+256) + 2570 (256*10+10)
    (models.SmallCNN, {}, (1, 28, 28, 1), 871_018),
    (models.VGG16, {}, (1, 32, 32, 3), 28_928_074),
    (models.VGG11, {}, (1, 32, 32, 3), 28_149_514),
    # width 0.25: every conv/hidden dense width ÷ 4; head dense(128,1024)+dense(1024,1024)+dense(1024,10).
    (models.VGG16, {"width": 0.25}, (1, 32, 32, 3), 1_819_930),
    # stem 432+32; stage1 3×4672; stage2 14528+2×18560; stage3 57728+2×73984; dense 650.
    (models.ResNet20, {}, (1, 32, 32, 3), 272_474),
    (models.ResNet18, {}, (1, 32, 32, 3), 11_173_962),
    (models.ResNet18, {"num_classes": 100}, (1, 32, 32, 3), 11_220_132),
])
def test_parameter_counts(preset, kwargs, shape, expected):
  assert count_params(preset(**kwargs), shape) == expected


def test_vgg16_layers_match_config_c():
  variables = jax.eval_shape(functools.partial(models.VGG16().init, train=False), jax.random.key(0),
                             jnp.zeros((1, 32, 32, 3)))
  kernels = [variables["params"][f"Conv_{i}"]["kernel"].shape for i in range(13)]
  assert [k[0] for k in kernels] == [3, 3, 3, 3, 3, 3, 1, 3, 3, 1, 3, 3, 1]
  assert [k[-1] for k in kernels] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
  dense = [variables["params"][f"Dense_{i}"]["kernel"].shape for i in range(3)]
  assert dense == [(512, 4096), (4096, 4096), (4096, 10)]


@pytest.mark.parametrize("name, shape", [("small_cnn", (2, 28, 28, 1)), ("vgg11", (2, 32, 32, 3)),
                                         ("vgg16", (2, 32, 32, 3)), ("resnet20", (2, 32, 32, 3)),
                                         ("resnet18", (2, 32, 32, 3))])
def test_forward_shapes_and_batchnorm_modes(name, shape):
  model = models.get_model(name, width=0.125, num_classes=7)
  x = jax.random.normal(jax.random.key(1), shape)
  variables = random_variables(model, shape)
  evaluate = jax.jit(functools.partial(model.apply, train=False))
  out = evaluate(variables, x)
  assert out.shape == (shape[0], 7)
  # Training mode updates the running statistics; eval mode uses them and changes nothing.
  _, updates = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(variables, x)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), updates["batch_stats"], variables["batch_stats"])
  assert all(jax.tree.leaves(changed))
  # Eval mode normalises with the running statistics, not the batch's: each example's logits are the same alone as
  # in the batch (BatchNorm with batch statistics would make them depend on the other examples).
  alone = jnp.concatenate([evaluate(variables, x[i:i + 1]) for i in range(shape[0])])
  np.testing.assert_allclose(alone, out, rtol=1e-4, atol=1e-4 * float(jnp.abs(out).max()))
  # ... and the running statistics are used: other statistics give other logits.
  moved = jax.tree.map(lambda a: a + 1.0, variables["batch_stats"])
  assert not np.allclose(evaluate({**variables, "batch_stats": moved}, x), out)


def test_eval_graph_has_no_max_pool_and_uses_the_activation():
  model = models.SmallCNN(width=0.25)
  x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
  variables = random_variables(model, x.shape)
  jaxpr = str(jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x))
  assert "reduce_window_max" not in jaxpr and "reduce_max" not in jaxpr
  calls = []

  def act(z):
    calls.append(z.shape)
    return nn.relu(z)

  jax.eval_shape(functools.partial(models.SmallCNN(width=0.25, act=act).apply, train=False), variables, x)
  assert len(calls) == 5  # four conv layers and the hidden dense layer
  run = lambda m: jax.jit(functools.partial(m.apply, train=False))(variables, x)
  assert not np.allclose(run(model), run(models.SmallCNN(width=0.25, act=nn.gelu)))


def test_width_rounding_and_unknown_model():
  assert models.scale_width(64, 0.01) == 1
  assert models.scale_width(64, 0.5) == 32
  with pytest.raises(ValueError, match="unknown model 'vgg19'"):
    models.get_model("vgg19")
  with pytest.raises(ValueError, match="differ in length"):
    models.ResNet(stage_sizes=(1, 1), stage_widths=(8,)).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


@pytest.mark.parametrize("kernel, strides, padding, dilation, spatial", [
    ((3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), (9, 9)),
    ((1, 1), (2, 2), "VALID", (1, 1), (9, 8)),
    ((3, 2), (1, 2), "SAME", (2, 1), (10, 7)),
    ((5, 5), (1, 1), ((2, 1), (0, 2)), (1, 1), (7, 7)),
])
def test_conv_im2col_grad_matches_lax(kernel, strides, padding, dilation, spatial):
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (3,) + spatial + (4,))
  w = jax.random.normal(kw, kernel + (4, 5))
  dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))

  def ref(x, w):
    return lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=dn)

  def fast(x, w):
    return models.conv_im2col_grad(x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=dn)

  y_ref, vjp_ref = jax.vjp(jax.jit(ref), x, w)
  y_fast, vjp_fast = jax.vjp(jax.jit(fast), x, w)
  np.testing.assert_allclose(y_fast, y_ref, rtol=1e-5, atol=1e-5)
  g = jax.random.normal(kg, y_ref.shape)
  for got, want in zip(vjp_fast(g), vjp_ref(g)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_fast_conv_model_has_same_variables_and_gradients():
  plain, fast = models.SmallCNN(width=0.25), models.SmallCNN(width=0.25, conv=models.FastConv)
  x = jax.random.normal(jax.random.key(1), (4, 28, 28, 1))
  variables = random_variables(plain, x.shape)
  assert jax.tree.structure(variables) == jax.tree.structure(random_variables(fast, x.shape))

  def loss(model, params):
    out, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                         mutable=["batch_stats"])
    return jnp.sum(out ** 2)

  g_plain = jax.jit(jax.grad(functools.partial(loss, plain)))(variables["params"])
  g_fast = jax.jit(jax.grad(functools.partial(loss, fast)))(variables["params"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), g_fast, g_plain)


# Each model converts with the core engine, and on random weights the SNN's readout approaches the ANN's
# logits as T grows (thresholds calibrated on the inputs, NeuronNorm, SNM neurons).
@pytest.mark.parametrize("name, shape", [("small_cnn", (4, 28, 28, 1)), ("vgg11", (4, 32, 32, 3)),
                                         ("vgg16", (4, 32, 32, 3)), ("resnet20", (4, 16, 16, 3)),
                                         ("resnet18", (4, 16, 16, 3))])
def test_models_convert_and_converge(name, shape):
  model = models.get_model(name, width=0.0625, num_classes=10)
  kx, kstats = jax.random.split(jax.random.key(2))
  x = jax.random.normal(kx, shape)
  variables = random_variables(model, shape)
  # Non-trivial BatchNorm statistics so that eval-mode BN is not the identity.
  _, updates = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
      variables, jax.random.normal(kstats, shape))
  variables = {"params": variables["params"], "batch_stats": updates["batch_stats"]}
  apply_fn = lambda v, x: model.apply(v, x, train=False)
  ann = apply_fn(variables, x)
  stats = jaxsnn.calibrate(apply_fn, variables, [x])
  snn = jaxsnn.convert(apply_fn, variables, x, jaxsnn.thresholds(stats, granularity="neuron"))
  trace = jaxsnn.simulate(snn, x, num_steps=256)
  err = jnp.abs(trace.outputs - ann[None]).max(axis=(1, 2)) / jnp.abs(ann).max()
  assert trace.outputs.shape == (256,) + ann.shape
  assert err[255] < 0.1, err[255]
  assert err[255] < 0.5 * err[15], (err[15], err[255])
