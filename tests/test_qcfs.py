"""The QCFS activation (Bu et al., ICLR 2022): values, straight-through gradient, training, and conversion with its
own thresholds (exact at T = L)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxsnn
from jaxsnn import models
from conftest import randomise_batch_stats


def numpy_qcfs(z, lam, levels):
  return lam * np.clip(np.floor(z * levels / lam + 0.5) / levels, 0, 1)


@pytest.mark.parametrize("levels", [1, 2, 4, 8])
def test_values_match_the_formula(levels):
  z = np.linspace(-3, 9, 997).astype(np.float32)
  for lam in (0.5, 1.0, 4.0, 8.0):
    np.testing.assert_array_equal(np.asarray(jaxsnn.qcfs(z, lam, levels)), numpy_qcfs(z, lam, levels))
  np.testing.assert_allclose(np.asarray(jax.jit(jaxsnn.qcfs, static_argnums=2)(z, 3.3, levels)),
                             numpy_qcfs(z, np.float32(3.3), levels), rtol=1e-6)


def test_straight_through_gradient():
  z = jnp.array([-1.0, 0.3, 0.9, 1.6, 2.2, 5.0])
  lam, levels = 2.0, 4
  dz = jax.grad(lambda z: jaxsnn.qcfs(z, lam, levels).sum())(z)
  step = np.floor(np.asarray(z) * levels / lam + 0.5)
  inside = (step >= 0) & (step <= levels)
  np.testing.assert_array_equal(dz, inside.astype(np.float32))  # d floor / du = 1 inside the clip range
  dlam = jax.grad(lambda lam: jaxsnn.qcfs(z, lam, levels).sum())(lam)
  want = np.sum(np.clip(step, 0, levels) / levels - inside * np.asarray(z) / lam)
  np.testing.assert_allclose(dlam, want, rtol=1e-6)
  # batching: vmap over thresholds and over inputs
  got = jax.vmap(lambda t: jaxsnn.qcfs(z, t, levels))(jnp.array([1.0, 2.0]))
  np.testing.assert_array_equal(got[1], jaxsnn.qcfs(z, 2.0, levels))
  with pytest.raises(ValueError, match="levels must be a positive int"):
    jaxsnn.qcfs(z, 1.0, 0)


def test_threshold_trains_with_the_weights():
  model = nn.Sequential([nn.Dense(16), models.QCFS(levels=4, init_threshold=8.0), nn.Dense(3)])
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(128, 5)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 3, 128))
  params = model.init(jax.random.key(0), x)
  opt = optax.sgd(0.1, momentum=0.9)
  state = opt.init(params)

  @jax.jit
  def step(params, state):
    loss, grads = jax.value_and_grad(
        lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean())(params)
    updates, state = opt.update(grads, state)
    return optax.apply_updates(params, updates), state, loss

  losses = []
  for _ in range(150):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  assert losses[-1] < 0.8 * losses[0]
  lam = float(params["params"]["layers_1"]["threshold"])
  assert abs(lam - 8.0) > 0.5  # lambda moved


def test_every_preset_takes_qcfs_as_its_activation():
  act = models.qcfs_activation(4)
  assert act == models.qcfs_activation(4) and hash(act) == hash(models.qcfs_activation(4))
  presets = ((models.ResNet20, (1, 32, 32, 3), 19), (functools.partial(models.VGG16, width=0.125), (1, 32, 32, 3), 15),
             (models.SmallCNN, (1, 28, 28, 1), 5))
  for preset, shape, activations in presets:
    model = preset(num_classes=10, act=act)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(variables["params"])]
    assert sum("'threshold'" in p for p in paths) == activations  # one lambda per activation
  with pytest.raises(ValueError, match="levels must be a positive int"):
    models.qcfs_activation(0)


# ---- conversion ---------------------------------------------------------------------------------------------------
def dyadic_qcfs_net(levels, lam, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.integers(-8, 9, (16, 4)) / 4, jnp.float32)
  w1 = jnp.asarray(rng.integers(-8, 9, (4, 6)) / 8, jnp.float32)
  b1 = jnp.asarray(rng.integers(-4, 5, (6,)) / 8, jnp.float32)
  w2 = jnp.asarray(rng.integers(-8, 9, (6, 3)) / 8, jnp.float32)
  b2 = jnp.asarray(rng.integers(-4, 5, (3,)) / 8, jnp.float32)
  variables = {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "lam": jnp.float32(lam)}
  apply_fn = lambda v, x: jaxsnn.qcfs(x @ v["w1"] + v["b1"], v["lam"], levels) @ v["w2"] + v["b2"]  # noqa: E731
  return apply_fn, variables, x


@pytest.mark.parametrize("neuron", [jaxsnn.IF(), jaxsnn.SNM()])
@pytest.mark.parametrize("levels,lam", [(4, 1.0), (8, 2.0), (2, 0.5), (4, 4.0)])
def test_one_qcfs_layer_converted_with_half_threshold_start_is_exact_at_T_equal_L(neuron, levels, lam):
  apply_fn, variables, x = dyadic_qcfs_net(levels, lam)
  snn = jaxsnn.convert(apply_fn, variables, x, neuron=neuron)  # no thresholds: the QCFS lambda, v0 = lambda / 2
  (site,) = snn.site_names
  assert snn.site_kinds == ((site, "qcfs", levels),)
  np.testing.assert_array_equal(snn.thresholds[site], np.full(6, lam, np.float32))
  np.testing.assert_array_equal(snn.initial_potential[site], np.full(6, 0.5, np.float32))
  ann = np.asarray(apply_fn(variables, x))
  for block in (None, levels):
    trace = jaxsnn.simulate(snn, x, levels, block_size=block)
    np.testing.assert_array_equal(np.asarray(trace.outputs[-1]), ann)  # exact, not close


def test_given_thresholds_override_lambda_and_relu_and_qcfs_sites_mix():
  rng = np.random.default_rng(1)
  w = [jnp.asarray(rng.normal(0, 0.5, s), jnp.float32) for s in ((4, 6), (6, 6), (6, 3))]
  x = jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)
  apply_fn = lambda v, x: jaxsnn.qcfs(jax.nn.relu(x @ v[0]) @ v[1], 1.5, 4) @ v[2]  # noqa: E731
  with pytest.raises(ValueError, match=r"missing: \['relu'\]"):
    jaxsnn.convert(apply_fn, w, x)  # the ReLU site needs a threshold
  stats = jaxsnn.calibrate(apply_fn, w, [x])
  assert set(stats.max) == {"relu", "qcfs", "output"}
  th = {"relu": jaxsnn.thresholds(stats)["relu"]}
  snn = jaxsnn.convert(apply_fn, w, x, th)
  np.testing.assert_array_equal(snn.thresholds["qcfs"], np.full(6, 1.5, np.float32))
  assert float(snn.initial_potential["relu"].max()) == 0.0 and float(snn.initial_potential["qcfs"].min()) == 0.5
  snn2 = jaxsnn.convert(apply_fn, w, x, {**th, "qcfs": jnp.full(6, 2.0)}, initial_potential=0.25)
  np.testing.assert_array_equal(snn2.thresholds["qcfs"], np.full(6, 2.0, np.float32))
  np.testing.assert_array_equal(snn2.initial_potential["qcfs"], np.full(6, 0.25, np.float32))


class QCFSResNet(nn.Module):
  levels: int

  @nn.compact
  def __call__(self, x):
    act = models.qcfs_activation(self.levels, 2.0)
    x = act(nn.BatchNorm(use_running_average=True)(nn.Conv(6, (3, 3))(x)))
    y = act(nn.BatchNorm(use_running_average=True)(nn.Conv(6, (3, 3))(x)))
    x = nn.relu(x + nn.BatchNorm(use_running_average=True)(nn.Conv(6, (3, 3))(y)))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    x = act(nn.Dense(12)(x.reshape(x.shape[0], -1)))
    return nn.Dense(4)(x)


def test_qcfs_net_with_residual_blocks_and_avg_pools_converges_as_T_grows():
  # As T grows the rate of a QCFS site tends to clip(z, 0, lambda): the QCFS activation with L -> infinity.
  x = jax.random.normal(jax.random.key(0), (8, 8, 8, 3))
  variables = randomise_batch_stats(QCFSResNet(4).init(jax.random.key(1), x), np.random.default_rng(0))
  limit_net = QCFSResNet(1 << 16).apply
  # The ReLU site's thresholds: its per-neuron max in the limit (the QCFS net's own can be lower, and would clip).
  relu_th = jaxsnn.thresholds(jaxsnn.calibrate(limit_net, variables, [x]))
  snn = jaxsnn.convert(QCFSResNet(4).apply, variables, x, {"QCFSResNet/relu": relu_th["QCFSResNet/relu"]})
  limit = np.asarray(limit_net(variables, x))
  steps = (64, 256, 1024)
  trace = jaxsnn.simulate(snn, x, steps[-1], block_size=256)
  errors = [float(np.abs(np.asarray(trace.outputs[t - 1]) - limit).max() / np.abs(limit).max()) for t in steps]
  assert errors[-1] < 2e-2 and errors[0] > errors[1] > errors[2], errors
