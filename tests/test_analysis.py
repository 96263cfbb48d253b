"""Analysis: information loss and its gradients, the Fig. 3 surface and plot, firing rates, fan-out / MACs / SynOps /
energy against hand counts and independent numpy counts, and the per-site conversion error."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsnn
from jaxsnn import analysis
from conftest import init_params


# ---- information loss (Eq. 12-13) -------------------------------------------------------------------------------
def numpy_loss(a, lam, T, alpha):
  """Eq. 12-13 element by element, in float64: below alpha*lam/T all is lost; above alpha*lam the excess is."""
  a = np.asarray(a, np.float64)
  lam = np.broadcast_to(np.asarray(lam, np.float64), a.shape)
  out = np.zeros_like(a)
  for idx in np.ndindex(a.shape):
    level = alpha * lam[idx]
    if a[idx] < level / T:
      out[idx] = a[idx]
    elif a[idx] > level:
      out[idx] = a[idx] - level
  return out


@pytest.fixture(scope="module")
def acts():
  rng = np.random.default_rng(0)
  a = rng.exponential(1.0, (40, 6)) * (rng.random((40, 6)) < 0.7)
  return a.astype(np.float32), a.max(0).astype(np.float32) * rng.uniform(0.8, 1.3, 6).astype(np.float32)


@pytest.mark.parametrize("per_neuron", [False, True])
def test_information_loss_matches_numpy(acts, per_neuron):
  a, lam = acts
  lam = lam if per_neuron else np.float32(lam.max())
  for T, alpha in [(1, 1.0), (8, 0.5), (32, 0.9), (100, 1.7)]:
    want = numpy_loss(a, lam, T, alpha)
    np.testing.assert_allclose(jaxsnn.information_loss(a, lam, T, alpha), want.sum(), rtol=1e-5)
    np.testing.assert_allclose(analysis.information_loss(a, lam, T, alpha, reduction="mean"), want.mean(), rtol=1e-5)
    np.testing.assert_allclose(analysis.information_loss(a, lam, T, alpha, reduction="none"), want, rtol=1e-5,
                               atol=1e-7)
  jitted = jax.jit(analysis.information_loss, static_argnames="reduction")
  np.testing.assert_allclose(jitted(a, lam, 16, 0.7), analysis.information_loss(a, lam, 16, 0.7), rtol=1e-6)
  with pytest.raises(ValueError, match="jaxsnn.information_loss: reduction"):
    analysis.information_loss(a, lam, 16, reduction="max")


def _safe_step(x0, kinks):
  """A finite-difference step that crosses no kink of a piecewise linear function around x0."""
  return 0.25 * np.min(np.abs(np.asarray(kinks, np.float64) - x0))


@pytest.mark.parametrize("T,alpha", [(4, 0.6), (16, 0.93), (64, 0.98)])
def test_information_loss_gradients_match_finite_differences(acts, T, alpha):
  a, lam = acts
  a64, lam64 = a.astype(np.float64), lam.astype(np.float64)
  # d/d alpha (per-neuron thresholds). Kinks in alpha: a = alpha*lam/T and a = alpha*lam.
  pos = a64 > 0
  kinks = np.concatenate([(a64 * T / lam64)[pos], (a64 / lam64)[pos]])
  h = _safe_step(alpha, kinks)
  fd = (numpy_loss(a, lam, T, alpha + h).sum() - numpy_loss(a, lam, T, alpha - h).sum()) / (2 * h)
  g = jax.grad(jaxsnn.information_loss, argnums=3)(jnp.asarray(a), jnp.asarray(lam), T, jnp.float32(alpha))
  np.testing.assert_allclose(g, fd, rtol=1e-4, atol=1e-4)
  assert fd != 0  # the test can fail: some activations are clipped at these alphas
  # d/d threshold, per neuron. Kinks in lam_j: a = alpha*lam_j/T and a = alpha*lam_j.
  g = jax.grad(jaxsnn.information_loss, argnums=1)(jnp.asarray(a), jnp.asarray(lam), T, alpha)
  for j in range(lam.size):
    col = a64[:, j][a64[:, j] > 0]
    h = _safe_step(lam64[j], np.concatenate([col * T / alpha, col / alpha]))
    up, down = lam64.copy(), lam64.copy()
    up[j] += h
    down[j] -= h
    fd = (numpy_loss(a, up, T, alpha).sum() - numpy_loss(a, down, T, alpha).sum()) / (2 * h)
    np.testing.assert_allclose(g[j], fd, rtol=1e-4, atol=1e-4)
  # d/d threshold for one layer-wise scalar threshold.
  lam_l = np.float64(lam.max()) * 0.9
  h = _safe_step(lam_l, np.concatenate([a64[pos] * T / alpha, a64[pos] / alpha]))
  fd = (numpy_loss(a, lam_l + h, T, alpha).sum() - numpy_loss(a, lam_l - h, T, alpha).sum()) / (2 * h)
  g = jax.grad(jaxsnn.information_loss, argnums=1)(jnp.asarray(a), jnp.float32(lam_l), T, alpha)
  np.testing.assert_allclose(g, fd, rtol=1e-4, atol=1e-4)


def test_relaxed_loss_tends_to_the_exact_one_and_its_gradient_sees_the_low_end(acts):
  a, lam = acts
  T, alpha = 16, 3.0  # alpha * lam > every activation: nothing is clipped, all the loss is below alpha * lam / T
  exact = numpy_loss(a, lam, T, alpha).sum()
  assert exact > 0
  assert jax.grad(jaxsnn.information_loss, argnums=3)(a, lam, T, alpha) == 0  # the exact loss is flat here

  def numpy_relaxed(alpha, tau):
    step = alpha * lam.astype(np.float64) / T
    return (a * 1 / (1 + np.exp(-(step - a) / (tau * step)))).sum()

  for tau in (0.3, 0.05):
    got = jaxsnn.information_loss(a, lam, T, alpha, temperature=tau)
    np.testing.assert_allclose(got, numpy_relaxed(alpha, tau), rtol=1e-5)
    h = 1e-4
    fd = (numpy_relaxed(alpha + h, tau) - numpy_relaxed(alpha - h, tau)) / (2 * h)
    g = jax.grad(lambda al: jaxsnn.information_loss(a, lam, T, al, temperature=tau))(jnp.float32(alpha))
    np.testing.assert_allclose(g, fd, rtol=1e-3)
    assert g > 0  # a larger threshold loses more below l / T
  np.testing.assert_allclose(jaxsnn.information_loss(a, lam, T, alpha, temperature=1e-4), exact, rtol=1e-3)
  with pytest.raises(ValueError, match="temperature"):
    jaxsnn.information_loss(a, lam, T, alpha, temperature=-1.0)


def test_surface_matches_pointwise_loss_and_neuron_norm_loses_less_at_alpha_one(acts, tmp_path):
  a, _ = acts
  neuron_max = a.max(0)
  alphas = np.array([0.25, 0.5, 1.0], np.float32)
  grid = np.array([1, 4, 16, 64], np.float32)  # T
  surf = jax.jit(analysis.information_loss_surface, static_argnames=("granularities", "reduction"))(
      a, neuron_max, alphas, grid, granularities=("layer", "channel", "neuron"))
  for granularity, lam in [("layer", np.full(6, neuron_max.max())), ("channel", neuron_max),
                           ("neuron", neuron_max)]:  # in a dense site [batch, 6] every neuron is its own channel
    assert surf[granularity].shape == (3, 4)
    for i, al in enumerate(alphas):
      for j, t in enumerate(grid):
        np.testing.assert_allclose(surf[granularity][i, j], numpy_loss(a, lam, t, al).sum(), rtol=1e-5)
  # At alpha = 1 nothing is clipped (thresholds are maxima of these very activations) and every neuron's own max is
  # at most the layer's, so NeuronNorm loses no more than LayerNorm, and strictly less at small T.
  assert (surf["neuron"][2] <= surf["layer"][2] + 1e-6).all()
  assert surf["neuron"][2, 1] < surf["layer"][2, 1]
  path = tmp_path / "fig3.png"
  analysis.plot_information_loss({k: surf[k] for k in ("layer", "neuron")}, alphas, grid, path, title="site")
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(ValueError, match=r"jaxsnn.information_loss_surface: granularity must be one of .*'batch'"):
    analysis.information_loss_surface(a, neuron_max, alphas, grid, granularities=("batch",))


# ---- firing rates ------------------------------------------------------------------------------------------------
def test_firing_rates_count_positive_and_negative_spikes():
  pos = {"a": jnp.array([[3, 0], [1, 4]], jnp.int32), "b": jnp.array([[2], [0]], jnp.int32)}
  neg = {"a": jnp.array([[1, 0], [0, 0]], jnp.int32), "b": jnp.array([[0], [2]], jnp.int32)}
  trace = jaxsnn.Trace(outputs=jnp.zeros((4, 2, 1)), pos_spikes=pos, neg_spikes=neg)
  rates = analysis.firing_rates(trace)
  # a: (3+1 + 0 + 1 + 4) = 9 spikes over 2 samples x 2 neurons x 4 steps; b: 4 spikes over 2 x 1 x 4.
  np.testing.assert_allclose(rates["a"], 9 / 16)
  np.testing.assert_allclose(rates["b"], 4 / 8)
  np.testing.assert_allclose(analysis.firing_rates(trace, per_neuron=True)["a"], [5 / 8, 4 / 8])
  np.testing.assert_allclose(analysis.average_firing_rate(trace), 13 / 24)


def test_average_firing_rate_when_neurons_times_steps_passes_int32():
  # 1024 neurons x 2**22 steps = 2**32 neuron-steps (a ResNet-20 batch of 256 at T=64 passes 2**31); each neuron
  # fired 2**21 times.
  steps = 2 ** 22
  outputs = np.broadcast_to(np.float32(0), (steps, 1, 1))  # only its shape is read
  pos = {"a": jnp.full((1, 1024), 2 ** 21, jnp.int32)}
  trace = jaxsnn.Trace(outputs=outputs, pos_spikes=pos, neg_spikes={"a": jnp.zeros((1, 1024), jnp.int32)})
  np.testing.assert_allclose(analysis.average_firing_rate(trace), 0.5)
  np.testing.assert_allclose(analysis.firing_rates(trace)["a"], 0.5)


# ---- fan-out, MACs, SynOps, energy -------------------------------------------------------------------------------
class Tiny(nn.Module):
  """Input 3x3x1 -> conv 2x2 VALID (1 channel) -> ReLU [2x2x1] -> flatten -> Dense(1)."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(1, (2, 2), padding="VALID")(x))
    return nn.Dense(1)(x.reshape(x.shape[0], -1))


def test_tiny_network_counted_by_hand():
  model = Tiny()
  x = jnp.ones((1, 3, 3, 1))
  variables = init_params(model, x, 0)
  variables = jax.tree_util.tree_map(lambda w: jnp.full_like(w, 0.5), variables)  # every weight non-zero
  apply_fn = lambda v, x: model.apply(v, x)  # noqa: E731
  snn = jaxsnn.convert(apply_fn, variables, x, jaxsnn.thresholds(jaxsnn.calibrate(apply_fn, variables, [x])))
  (site,) = snn.site_names
  fo = analysis.fan_out(snn)
  # Each input pixel feeds the 2x2 windows that contain it: 1 at the corners, 2 on the edges, 4 in the middle.
  np.testing.assert_array_equal(fo["input"][..., 0], [[1, 2, 1], [2, 4, 2], [1, 2, 1]])
  np.testing.assert_array_equal(fo[site][..., 0], [[1, 1], [1, 1]])  # each hidden neuron feeds the one output
  macs = analysis.ann_macs(snn)
  assert float(macs.first_layer) == 16  # 4 output pixels x 4 taps
  assert float(macs.total) == 16 + 4  # + the dense layer's 4 weights
  # A run of T = 4 steps on one sample: 3+2 spikes at two neurons, 1+1 (one negative) at another, none at one.
  trace = jaxsnn.Trace(outputs=jnp.zeros((4, 1, 1)), pos_spikes={site: jnp.array([[[[3], [0]], [[1], [2]]]])},
                       neg_spikes={site: jnp.array([[[[0], [0]], [[1], [0]]]])})
  np.testing.assert_allclose(analysis.synops(snn, trace)[site], 7 / 4)
  np.testing.assert_allclose(analysis.synops(snn, trace, per_step=False)[site], 7)
  e = analysis.energy(snn, trace)
  np.testing.assert_allclose(e.snn_pj, 16 * 4.6 + 7 * 0.9, rtol=1e-6)
  np.testing.assert_allclose(e.ann_pj, 20 * 4.6, rtol=1e-6)
  np.testing.assert_allclose(e.ratio, (16 * 4.6 + 7 * 0.9) / (20 * 4.6), rtol=1e-6)
  e4 = analysis.energy(snn, trace, first_layer_every_step=True, e_mac=3.0, e_ac=1.0)
  np.testing.assert_allclose(e4.ratio, (4 * 16 * 3.0 + 7) / (20 * 3.0), rtol=1e-6)


class Deep(nn.Module):
  """SAME/strided convs with padding edges, a residual identity, a pool and a dense head."""

  pool: str = "avg"

  @nn.compact
  def __call__(self, x):
    a = nn.relu(nn.Conv(2, (3, 3), padding="SAME")(x))  # site A [5, 5, 2]
    b = nn.relu(nn.Conv(3, (3, 3), strides=2, padding="SAME")(a))  # site B [3, 3, 3]
    c = nn.relu(nn.Conv(3, (1, 1))(b) + b)  # site C [3, 3, 3], residual
    c = c[:, :2, :2]  # crop to 2x2 before the pool
    c = nn.avg_pool(c, (2, 2), (2, 2)) if self.pool == "avg" else nn.max_pool(c, (2, 2), (2, 2))
    return nn.Dense(4)(c.reshape(c.shape[0], -1))


def numpy_conv_fan_out(shape, kernel, stride):
  """Fan-out of each input of a SAME conv, by enumerating every (output position, tap, output channel)."""
  H, W, C = shape
  kh, kw, _, co = kernel.shape
  oh, ow = -(-H // stride), -(-W // stride)
  pt = max((oh - 1) * stride + kh - H, 0) // 2
  pl = max((ow - 1) * stride + kw - W, 0) // 2
  fan = np.zeros(shape)
  macs = 0
  for p in range(oh):
    for q in range(ow):
      for di in range(kh):
        for dj in range(kw):
          i, j = p * stride + di - pt, q * stride + dj - pl
          if 0 <= i < H and 0 <= j < W:
            for c in range(C):
              n = int(np.count_nonzero(kernel[di, dj, c]))
              fan[i, j, c] += n
              macs += n
  return fan, macs


@pytest.mark.parametrize("pool", ["avg", "max"])
def test_fan_out_and_macs_of_convs_residual_pool_and_dense_against_numpy(pool):
  model = Deep(pool=pool)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 5, 2)), jnp.float32)
  variables = init_params(model, x, 1)
  p = jax.tree_util.tree_map(np.array, variables["params"])
  p["Conv_0"]["kernel"][0, 0, 1, 0] = 0.0  # zero weights are not connections
  p["Conv_1"]["kernel"][1, 2, 0, 1] = 0.0
  p["Conv_2"]["kernel"][0, 0, 2, 1] = 0.0
  p["Dense_0"]["kernel"][1, 3] = 0.0
  variables = {"params": jax.tree_util.tree_map(jnp.asarray, p)}
  apply_fn = lambda v, x: model.apply(v, x)  # noqa: E731
  snn = jaxsnn.convert(apply_fn, variables, x, jaxsnn.thresholds(jaxsnn.calibrate(apply_fn, variables, [x])))
  site_a, site_b, site_c = snn.site_names
  fo = analysis.fan_out(snn)
  fan_in, macs_in = numpy_conv_fan_out((5, 5, 2), p["Conv_0"]["kernel"], 1)
  fan_a, macs_a = numpy_conv_fan_out((5, 5, 2), p["Conv_1"]["kernel"], 2)
  fan_b, macs_b = numpy_conv_fan_out((3, 3, 3), p["Conv_2"]["kernel"], 1)
  np.testing.assert_array_equal(fo["input"], fan_in)
  np.testing.assert_array_equal(fo[site_a], fan_a)
  np.testing.assert_array_equal(fo[site_b], fan_b + 1)  # + the residual identity
  # Site C: the cropped 2x2 corner pools into one position that feeds the dense layer; the rest feeds nothing.
  want_c = np.zeros((3, 3, 3))
  want_c[:2, :2] = np.count_nonzero(p["Dense_0"]["kernel"], axis=1)
  np.testing.assert_array_equal(fo[site_c], want_c)
  assert fo["input"][2, 2, 0] > fo["input"][0, 2, 0] > fo["input"][0, 0, 0]  # padding edges: fewer connections
  # pooling="average" keeps the pool's 1/4: the pooled corner counts a quarter of the dense fan-out; nothing else
  # changes (a max pool has no 1/k).
  avg = analysis.fan_out(snn, pooling="average")
  for name in [site_a, site_b, "input"]:
    np.testing.assert_array_equal(avg[name], fo[name])
  np.testing.assert_allclose(avg[site_c], want_c / 4 if pool == "avg" else want_c)
  with pytest.raises(ValueError, match="jaxsnn.synops: pooling"):
    analysis.synops(snn, None, pooling="sum")
  macs = analysis.ann_macs(snn)
  assert list(macs.per_layer) == ["Deep/Conv_0/conv_general_dilated", "Deep/Conv_1/conv_general_dilated",
                                  "Deep/Conv_2/conv_general_dilated", "Deep/Dense_0/dot_general"]
  np.testing.assert_array_equal([float(v) for v in macs.per_layer.values()],
                                [macs_in, macs_a, macs_b, np.count_nonzero(p["Dense_0"]["kernel"])])
  assert float(macs.first_layer) == macs_in
  # SynOps of random spike counts: sum of spikes x fan-out, per sample.
  rng = np.random.default_rng(0)
  pos = {k: jnp.asarray(rng.integers(0, 5, (2,) + s), jnp.int32) for k, s in snn.site_shapes}
  neg = {k: jnp.asarray(rng.integers(0, 2, (2,) + s), jnp.int32) for k, s in snn.site_shapes}
  trace = jaxsnn.Trace(outputs=jnp.zeros((8, 2, 4)), pos_spikes=pos, neg_spikes=neg)
  ops = analysis.synops(snn, trace)
  want = {k: float((np.asarray(pos[k] + neg[k]) * np.asarray(fo[k])).sum()) / 2 / 8 for k in snn.site_names}
  for k in snn.site_names:
    np.testing.assert_allclose(ops[k], want[k], rtol=1e-6)
  e = analysis.energy(snn, trace)
  total_macs = macs_in + macs_a + macs_b + np.count_nonzero(p["Dense_0"]["kernel"])
  np.testing.assert_allclose(e.ratio, (macs_in * 4.6 + 8 * sum(want.values()) * 0.9) / (total_macs * 4.6), rtol=1e-5)


class Plain(nn.Module):
  """conv -> ReLU -> avg pool -> conv -> ReLU -> global mean -> dense: no residuals, so every connection is a MAC."""

  @nn.compact
  def __call__(self, x):
    x = nn.avg_pool(nn.relu(nn.Conv(3, (3, 3))(x)), (2, 2), (2, 2))
    x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x))
    return nn.Dense(5)(x.mean(axis=(1, 2)))


def test_average_pooling_fan_outs_add_up_to_the_ann_macs():
  model = Plain()
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 2)), jnp.float32)
  variables = init_params(model, x, 2)
  apply_fn = lambda v, x: model.apply(v, x)  # noqa: E731
  snn = jaxsnn.convert(apply_fn, variables, x, jaxsnn.thresholds(jaxsnn.calibrate(apply_fn, variables, [x])))
  total = lambda fo: sum(float(jnp.sum(v)) for v in jax.tree_util.tree_leaves(fo))  # noqa: E731
  macs = analysis.ann_macs(snn)
  # With the pools' 1/k kept, a neuron's share of every MAC it takes part in is counted once: the sum is the MACs.
  np.testing.assert_allclose(total(analysis.fan_out(snn, pooling="average")), float(macs.total), rtol=1e-6)
  # Folded, each pool multiplies the next layer's connections by its window size (2x2 here, 4x4 for the mean).
  assert total(analysis.fan_out(snn)) > float(macs.total)


# ---- per-site conversion error -----------------------------------------------------------------------------------
class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(8)(x))
    x = nn.relu(nn.Dense(6)(x))
    return nn.Dense(3)(x)


def test_conversion_error_against_numpy_and_it_shrinks_with_T():
  model = MLP()
  x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 5)), jnp.float32)
  variables = init_params(model, x, 1)
  apply_fn = lambda v, x: model.apply(v, x)  # noqa: E731
  stats = jaxsnn.calibrate(apply_fn, variables, [x])
  snn = jaxsnn.convert(apply_fn, variables, x, jaxsnn.thresholds(stats))
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables["params"])
  a1 = np.maximum(np.asarray(x, np.float64) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], 0)
  a2 = np.maximum(a1 @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"], 0)
  logits = a2 @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]
  errors = {}
  for T in (8, 128):
    trace = jaxsnn.simulate(snn, x, T)
    err = analysis.conversion_error(snn, x, trace)
    assert list(err) == list(snn.site_names) + ["output"]
    for name, ann in zip(snn.site_names, (a1, a2)):
      net = np.asarray(trace.pos_spikes[name] - trace.neg_spikes[name], np.float64)
      rate = net * np.asarray(snn.thresholds[name], np.float64) / T
      np.testing.assert_allclose(err[name].mean_abs, np.abs(rate - ann).mean(), rtol=1e-4, atol=1e-6)
      np.testing.assert_allclose(err[name].relative, np.abs(rate - ann).sum() / np.abs(ann).sum(), rtol=1e-4)
      np.testing.assert_allclose(err[name].ann_mean, ann.mean(), rtol=1e-5)
      np.testing.assert_allclose(err[name].snn_mean, rate.mean(), rtol=1e-5)
    out = np.asarray(trace.outputs[-1], np.float64)
    np.testing.assert_allclose(err["output"].mean_abs, np.abs(out - logits).mean(), rtol=1e-4, atol=1e-6)
    errors[T] = err
  for name in errors[8]:
    assert errors[128][name].relative < errors[8][name].relative
  with pytest.raises(ValueError, match="jaxsnn.conversion_error"):
    analysis.conversion_error(snn, x[:4], trace)


def test_relaxed_loss_gradient_is_finite_with_dead_neurons():
  a = jnp.array([0.0, 0.5, 1.0])
  lam = jnp.array([0.0, 1.0, 1.0])  # NeuronNorm gives dead neurons a threshold of 0
  exact = jaxsnn.information_loss(a, lam, 4, 0.5)
  relaxed = jaxsnn.information_loss(a, lam, 4, 0.5, temperature=1e-4)
  np.testing.assert_allclose(relaxed, exact, rtol=1e-4)
  g = jax.grad(lambda al: jaxsnn.information_loss(a, lam, 4, al, temperature=0.1))(0.5)
  assert np.isfinite(g)
