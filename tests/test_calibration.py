"""Calibration statistics and threshold rules: the max statistic, masked rows, non-finite activations, neuron /
channel / layer / layer percentile rules, the histogram statistic and its error bound, save and load, and the authors'
(test-leaking) per-batch-slot protocol."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import jaxsnn
from jaxsnn._src import calibrate as cal
from jaxsnn._src import checks
from conftest import Tiny, init_params, random_net

X = jnp.asarray(np.random.default_rng(7).normal(size=(16, 6)), jnp.float32)


class TwoLayer(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(3, (3, 3))(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(6)(x))
    return nn.Dense(4)(x)


@pytest.fixture(scope="module")
def two_layer():
  model = TwoLayer()
  x = jnp.asarray(np.random.default_rng(0).normal(size=(24, 5, 5, 2)), jnp.float32)
  variables = init_params(model, x, 1)
  apply_fn = lambda v, x: model.apply(v, x)  # noqa: E731
  batches = [x[:8], x[8:16], x[16:]]
  return apply_fn, variables, x, batches


def numpy_forward(variables, x):
  """The TwoLayer network in numpy (independent of jaxsnn's walk): its two ReLU outputs and the logits."""
  p = jax.tree_util.tree_map(np.asarray, variables["params"])
  x = np.asarray(x, np.float64)
  k = p["Conv_0"]["kernel"]
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  conv = np.zeros(x.shape[:3] + (k.shape[-1],))
  for i in range(x.shape[1]):
    for j in range(x.shape[2]):
      conv[:, i, j] = np.einsum("nhwc,hwco->no", xp[:, i:i + 3, j:j + 3], k)
  a1 = np.maximum(conv + p["Conv_0"]["bias"], 0)
  a2 = np.maximum(a1.reshape(len(x), -1) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], 0)
  return a1, a2, a2 @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]


def test_max_statistic_and_every_norm_against_numpy(two_layer):
  apply_fn, variables, x, batches = two_layer
  stats = jaxsnn.calibrate(apply_fn, variables, batches)
  a1, a2, logits = numpy_forward(variables, x)
  names = list(stats.max)
  assert names == ["TwoLayer/relu", "TwoLayer/relu_1", "output"]
  ref = {names[0]: a1.max(0), names[1]: a2.max(0)}
  for name, m in ref.items():
    np.testing.assert_allclose(stats.max[name], m, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats.max["output"], logits.max(0), rtol=1e-5, atol=1e-6)
  neuron = jaxsnn.thresholds(stats, "neuron")
  channel = jaxsnn.thresholds(stats, "channel")
  layer = jaxsnn.thresholds(stats, "layer", alpha=0.5)
  for name, m in ref.items():
    np.testing.assert_allclose(neuron[name], m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer[name], np.full(m.shape, 0.5 * m.max()), rtol=1e-5)
    per_channel = m.reshape(-1, m.shape[-1]).max(0)
    np.testing.assert_allclose(channel[name], np.broadcast_to(per_channel, m.shape), rtol=1e-5)


@pytest.mark.parametrize("seed", [3])
def test_thresholds_of_every_norm_have_the_sites_shapes(seed):
  apply_fn, variables, x = random_net(seed, allow_max_pool=True)
  stats = jaxsnn.calibrate(apply_fn, variables, [x[:4], x[4:]], histogram=True)
  snn = jaxsnn.convert(apply_fn, variables, x, jaxsnn.thresholds(stats))
  shapes = dict(snn.site_shapes)
  variants = [jaxsnn.thresholds(stats, g) for g in checks.GRANULARITIES]
  variants += [jaxsnn.thresholds(stats, "layer", percentile=p) for p in (99.9, 99.99)]
  for th in variants:
    assert {k: tuple(np.shape(v)) for k, v in th.items() if k != "output"} == shapes
    assert np.shape(th["output"]) == snn.output_shape
    snn.replace(thresholds=th)  # accepted by the converter's own check


def test_percentile_statistic_matches_numpy_within_the_stated_bound():
  rng = np.random.default_rng(0)
  # Values over many orders of magnitude, many exact zeros, ties, and a few huge outliers.
  vals = (rng.lognormal(0.0, 4.0, (6, 50, 7)) * (rng.random((6, 50, 7)) < 0.6)).astype(np.float32)
  vals[0, :5, 0] = 3.25
  vals[1, 0, 0] = 1e30
  relu = lambda v, x: jax.nn.relu(x).sum(-1)  # noqa: E731  one site: the relu of the input itself
  stats = jaxsnn.calibrate(relu, {}, [jnp.asarray(b) for b in vals], histogram=True)
  (site,) = stats.hist
  flat = vals.ravel()
  assert stats.hist[site].sum() == flat.size and stats.hist[site][0] == (flat == 0).sum()
  for q in (0, 1, 37.5, 50, 90, 99, 99.9, 99.99, 100):
    for include_zeros in (False, True):
      data = flat if include_zeros else flat[flat > 0]
      want = np.percentile(data.astype(np.float64), q)
      got = jaxsnn.site_percentiles(stats, q, include_zeros=include_zeros)[site]
      assert abs(got - want) <= cal.PERCENTILE_RELATIVE_ERROR * want, (q, include_zeros, got, want)
  th = jaxsnn.thresholds(stats, "layer", percentile=99.9, alpha=2.0)[site]
  np.testing.assert_allclose(th, 2.0 * jaxsnn.site_percentiles(stats, 99.9)[site], rtol=1e-6)
  assert np.shape(th) == vals.shape[2:]


def test_every_normal_bin_is_read_within_the_documented_bound():
  points = cal.hist_bin_points()
  edges = cal.hist_bin_edges()
  first_normal = int(np.searchsorted(edges, np.finfo(np.float32).tiny))
  lo = edges[first_normal:-2]
  hi = np.append(edges[first_normal + 1:-2], 2.0 ** 128)
  p = points[first_normal:-1]
  assert np.all((lo <= p) & (p <= hi))
  worst = np.maximum((p - lo) / lo, (hi - p) / hi)
  w = 2.0 ** -cal.HIST_MANTISSA_BITS
  assert worst.max() <= w / (2 + w) * (1 + 1e-12) < cal.PERCENTILE_RELATIVE_ERROR
  assert points[0] == 0 and points[-1] == np.inf and len(points) == cal.HIST_BINS


_HIST_PAD = 64


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(float(np.float32(1e-30)), float(np.float32(1e30)), width=32), min_size=1,
                max_size=_HIST_PAD), st.floats(0, 100))
# Found by hypothesis: with bins read at their arithmetic midpoints, values on bin lower edges (0.25, 1.0) hit the
# bound exactly and float64 rounding of the interpolation crossed it.
@example([1.0, 1.0, 0.25], 1.0)
@example([float(np.float32(3.4e38)), 1.0], 100.0)  # the last finite bin
def test_percentile_bound_holds_for_any_positive_data(values, q):
  vals = np.zeros(_HIST_PAD, np.float32)  # fixed shape (one compilation); the zero padding is left out below
  vals[:len(values)] = values
  hist = np.bincount(np.asarray(cal.hist_bins(vals)), minlength=cal.HIST_BINS).astype(np.int64)
  stats = jaxsnn.Stats(max={"s": jnp.asarray(vals.max())}, num_samples=1, hist={"s": hist})
  want = np.percentile(np.asarray(values, np.float32).astype(np.float64), q)
  got = jaxsnn.site_percentiles(stats, q)["s"]
  assert abs(got - want) <= cal.PERCENTILE_RELATIVE_ERROR * want


def test_percentile_of_a_network_site_matches_numpy(two_layer):
  apply_fn, variables, x, batches = two_layer
  stats = jaxsnn.calibrate(apply_fn, variables, batches, histogram=True)
  a1, a2, _ = numpy_forward(variables, x)
  for name, a in zip(stats.hist, (a1, a2)):
    want = np.percentile(a[a > 0], 99.0)
    got = jaxsnn.thresholds(stats, "layer", percentile=99.0)[name]
    np.testing.assert_allclose(got, np.full(a.shape[1:], want), rtol=cal.PERCENTILE_RELATIVE_ERROR + 1e-5)


def test_histogram_counts_are_exact_when_flushed_to_int64(two_layer, monkeypatch):
  apply_fn, variables, _, batches = two_layer
  whole = jaxsnn.calibrate(apply_fn, variables, batches, histogram=True, micro_batch=8)
  monkeypatch.setattr(cal, "_INT32_MAX", 1000)  # micro-batches add 8 x 75 counts: a device -> host flush before each
  flushed = jaxsnn.calibrate(apply_fn, variables, batches, histogram=True, micro_batch=8)
  for k in whole.hist:
    np.testing.assert_array_equal(whole.hist[k], flushed.hist[k])
    assert flushed.hist[k].dtype == np.int64
  monkeypatch.setattr(cal, "_INT32_MAX", 500)
  with pytest.raises(ValueError, match="jaxsnn.calibrate: a computation of 8 examples has 600 activations"):
    jaxsnn.calibrate(apply_fn, variables, batches, histogram=True, micro_batch=8)


def test_save_load_round_trip_is_exact_and_names_are_stable(two_layer, tmp_path):
  apply_fn, variables, x, batches = two_layer
  stats = jaxsnn.calibrate(apply_fn, variables, batches, histogram=True)
  jaxsnn.save_stats(tmp_path / "stats.npz", stats)
  loaded = jaxsnn.load_stats(tmp_path / "stats.npz")
  assert loaded.num_samples == stats.num_samples == 24
  assert list(loaded.max) == list(stats.max) and list(loaded.hist) == list(stats.hist)
  for k in stats.max:
    np.testing.assert_array_equal(loaded.max[k], stats.max[k])
    assert loaded.max[k].dtype == stats.max[k].dtype
  for k in stats.hist:
    np.testing.assert_array_equal(loaded.hist[k], stats.hist[k])
  th = jaxsnn.thresholds(stats, "layer", percentile=99.9)
  jaxsnn.save_thresholds(tmp_path / "th.npz", th)
  th2 = jaxsnn.load_thresholds(tmp_path / "th.npz")
  assert list(th2) == list(th)
  for k in th:
    np.testing.assert_array_equal(th2[k], th[k])
  # A fresh instance of the same model traces to the same site names, so saved thresholds convert it.
  model2 = TwoLayer()
  snn = jaxsnn.convert(lambda v, x: model2.apply(v, x), variables, x, th2)
  assert set(snn.site_names) == set(th) - {"output"}
  stats_no_hist = stats._replace(hist=None)
  jaxsnn.save_stats(tmp_path / "s2.npz", stats_no_hist)
  assert jaxsnn.load_stats(tmp_path / "s2.npz").hist is None
  with pytest.raises(ValueError, match="jaxsnn.load_stats"):
    jaxsnn.load_stats(tmp_path / "th.npz")
  with pytest.raises(ValueError, match="jaxsnn.load_thresholds"):
    jaxsnn.load_thresholds(tmp_path / "stats.npz")


def test_threshold_errors(two_layer):
  apply_fn, variables, _, batches = two_layer
  stats = jaxsnn.calibrate(apply_fn, variables, batches)
  with pytest.raises(ValueError, match="jaxsnn.thresholds: .*histogram=True"):
    jaxsnn.thresholds(stats, "layer", percentile=99.9)
  with pytest.raises(ValueError, match="jaxsnn.thresholds: percentile thresholds are layer-wise"):
    jaxsnn.thresholds(stats, "neuron", percentile=99.9)
  with pytest.raises(ValueError, match="jaxsnn.site_percentiles"):
    jaxsnn.site_percentiles(stats, 50)
  hstats = jaxsnn.calibrate(apply_fn, variables, batches, histogram=True)
  with pytest.raises(ValueError, match="percentile must be in"):
    jaxsnn.thresholds(hstats, "layer", percentile=0)
  with pytest.raises(ValueError, match="jaxsnn.thresholds: granularity must be one of"):
    jaxsnn.thresholds(stats, "authors")


def test_authors_protocol_keeps_a_batch_slot_axis_and_leaks_the_test_set(two_layer):
  apply_fn, variables, x, _ = two_layer
  test, train = [x[:6], x[6:12]], [x[12:18], x[18:24]]
  slots = jaxsnn.authors_protocol.thresholds(apply_fn, variables, test + train)
  a1, a2, logits = numpy_forward(variables, x)
  per_batch = lambda a: np.maximum(a.reshape((4, 6) + a.shape[1:]).max(0), 0)  # noqa: E731  max over batches, from 0
  for name, a in zip(["TwoLayer/relu", "TwoLayer/relu_1", "output"], (a1, a2, logits)):
    assert np.shape(slots[name]) == (6,) + a.shape[1:]
    np.testing.assert_allclose(slots[name], per_batch(a), rtol=1e-5, atol=1e-6)
  # The leak: every test sample's own activations are below its slot's thresholds.
  for name, a in zip(["TwoLayer/relu", "TwoLayer/relu_1"], (a1, a2)):
    for batch in range(2):
      assert (a[6 * batch:6 * batch + 6] <= np.asarray(slots[name]) + 1e-6).all()
  with pytest.raises(ValueError, match="authors_protocol.thresholds: a batch has 5 real samples"):
    jaxsnn.authors_protocol.thresholds(apply_fn, variables, [x[:6], x[6:11]])


def test_simulate_authors_runs_each_sample_with_its_slot_thresholds(two_layer):
  apply_fn, variables, x, _ = two_layer
  # Slots from other samples than the simulated ones: no activation sits exactly on its threshold, where the
  # summation order (batched vs single) could decide a spike.
  slots = jaxsnn.authors_protocol.thresholds(apply_fn, variables, [x[8:12], x[12:16]])
  snn = jaxsnn.convert(apply_fn, variables, x, jaxsnn.thresholds(jaxsnn.calibrate(apply_fn, variables, [x])))
  trace = jaxsnn.authors_protocol.simulate(snn, x[:3], slots, 12)
  assert trace.outputs.shape == (12, 3, 4)
  for i in range(3):
    one = jaxsnn.simulate(snn.replace(thresholds={k: slots[k][i] for k in snn.site_names}), x[i:i + 1], 12)
    np.testing.assert_allclose(trace.outputs[:, i], one.outputs[:, 0], rtol=1e-4, atol=1e-4)  # summation order
    for k in snn.site_names:
      np.testing.assert_array_equal(trace.pos_spikes[k][i], one.pos_spikes[k][0])
      np.testing.assert_array_equal(trace.neg_spikes[k][i], one.neg_spikes[k][0])
  with pytest.raises(ValueError, match="authors_protocol.simulate: slot thresholds"):
    jaxsnn.authors_protocol.simulate(snn, x[:5], slots, 4)


def test_calibrate_rejects_one_array_with_a_message_that_says_what_to_pass():
  model = Tiny()
  variables = model.init(jax.random.key(0), X)
  with pytest.raises(ValueError, match=r"iterable of batches(.|\n)*Pass \[x\] for one batch"):
    jaxsnn.calibrate(model.apply, variables, X)
  with pytest.raises(ValueError, match="iterable of batches"):
    jaxsnn.calibrate(model.apply, variables, np.asarray(X))


def test_masked_rows_never_enter_the_statistics():
  model = Tiny()
  variables = model.init(jax.random.key(0), X)
  padded = jnp.concatenate([X[8:], 100 * jnp.ones((4, 6))])  # padding that would dominate every max
  mask = np.array([True] * 8 + [False] * 4)
  got = jaxsnn.calibrate(model.apply, variables, [X[:8], (padded, None, mask)], histogram=True)
  want = jaxsnn.calibrate(model.apply, variables, [X[:8], X[8:]], histogram=True)
  assert got.num_samples == want.num_samples == 16
  for k in want.max:
    np.testing.assert_array_equal(got.max[k], want.max[k])
  for k in want.hist:
    np.testing.assert_array_equal(got.hist[k], want.hist[k])
  with pytest.raises(ValueError, match="jaxsnn.calibrate: every example of the batches is masked out"):
    jaxsnn.calibrate(model.apply, variables, [(X, None, np.zeros(16, bool))])


def test_non_finite_activations_are_named_at_calibration():
  model = Tiny()
  variables = model.init(jax.random.key(0), X)
  with pytest.raises(ValueError, match=r"non-finite activations(.|\n)*site 'Tiny/relu': 8 values"):
    jaxsnn.calibrate(model.apply, variables, [X[:4], X[4:8].at[1, 2].set(jnp.nan)])
