"""Low-latency tools: initial membrane potential, thresholds for a target T (histogram and gradient variants),
layer-wise SNN calibration, and defined behaviour for non-finite inputs."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxsnn
from random_nets import random_net
from test_core_convert import residual_setup
from test_core_hardening import count_compiles


def numpy_neuron_run(kind, currents, threshold, v0, steps):
  """Independent re-statement of IF / SNM with an initial potential, in float64 (exact on dyadic values)."""
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
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.integers(-8, 9, (6, 4)) / 4, jnp.float32)
  w1 = jnp.asarray(rng.integers(-8, 9, (4, 5)) / 8, jnp.float32)
  b1 = jnp.asarray(rng.integers(-4, 5, (5,)) / 8, jnp.float32)
  w2 = jnp.asarray(rng.integers(-8, 9, (5, 3)) / 8, jnp.float32)
  th = {"relu": jnp.asarray(rng.integers(1, 9, (5,)) / 4, jnp.float32)}
  apply_fn = lambda v, x: jax.nn.relu(x @ v[0] + v[1]) @ v[2]  # noqa: E731
  return apply_fn, (w1, b1, w2), x, th, np.asarray(x @ w1 + b1, np.float64)


@pytest.mark.parametrize("neuron", [jaxsnn.SNM(), jaxsnn.IF()])
@pytest.mark.parametrize("potential", ["scalar", "per_neuron"])
def test_initial_potential_against_numpy_exactly(neuron, potential):
  apply_fn, variables, x, th, currents = dyadic_two_layer()
  if potential == "scalar":
    ip, frac = 0.5, np.full(5, 0.5)
  else:
    frac = np.array([0.0, 0.25, 0.5, 0.75, -0.5])
    ip = {"relu": jnp.asarray(frac, jnp.float32)}
  snn = jaxsnn.convert(apply_fn, variables, x, th, neuron=neuron, initial_potential=ip)
  steps = 16  # a power of two: the readout's division by T is exact
  theta = np.asarray(th["relu"], np.float64)
  pos, neg, out = numpy_neuron_run(neuron.name[:3], currents, theta, frac * theta, steps)
  for block in (None, 3, 16):
    trace = jaxsnn.simulate(snn, x, steps, block_size=block)
    np.testing.assert_array_equal(trace.pos_spikes["relu"], pos)
    np.testing.assert_array_equal(trace.neg_spikes["relu"], neg)
    np.testing.assert_array_equal(trace.outputs[-1], (out @ np.asarray(variables[2], np.float64)) / steps)


def test_half_threshold_start_rounds_instead_of_flooring():
  # A constant current a reaches clip(floor(a T / theta + p), 0, T) spikes: p = 1/2 rounds (QCFS Theorem 2).
  apply_fn, variables, x, th, currents = dyadic_two_layer(1)
  theta = np.asarray(th["relu"], np.float64)
  for p, rule in ((0.0, np.floor), (0.5, lambda u: np.floor(u + 0.5))):
    snn = jaxsnn.convert(apply_fn, variables, x, th, neuron=jaxsnn.IF(), initial_potential=p)
    for steps in (1, 4, 8):
      count = np.asarray(jaxsnn.simulate(snn, x, steps).pos_spikes["relu"])
      np.testing.assert_array_equal(count, np.clip(rule(currents * steps / theta), 0, steps))


residual = residual_setup  # a conv net with a residual block, BatchNorm, max and average pooling


@pytest.mark.parametrize("neuron,readout", [(jaxsnn.SNM(), "membrane"), (jaxsnn.SNM(), "spike"),
                                            (jaxsnn.IF(), "spike")])
def test_schedules_stay_bit_identical_with_potentials_and_offsets(neuron, readout):
  apply_fn, variables, x, th = residual()
  rng = np.random.default_rng(3)
  snn = jaxsnn.convert(apply_fn, variables, x, th, neuron=neuron, readout=readout, initial_potential=0.5)
  shapes = dict(snn.site_shapes)
  snn = snn.replace(initial_potential={k: rng.uniform(0, 1, s).astype(np.float32) for k, s in shapes.items()},
                    offsets={k: rng.normal(0, 0.05, s).astype(np.float32) for k, s in shapes.items()})
  ref = jaxsnn.simulate(snn, x, 23)
  for block in (4, 23):
    got = jaxsnn.simulate(snn, x, 23, block_size=block)
    np.testing.assert_array_equal(np.asarray(got.outputs), np.asarray(ref.outputs))
    for k in ref.pos_spikes:
      np.testing.assert_array_equal(got.pos_spikes[k], ref.pos_spikes[k])
      np.testing.assert_array_equal(got.neg_spikes[k], ref.neg_spikes[k])


def test_output_layer_potential_with_spike_readout():
  apply_fn, variables, x, th, _ = dyadic_two_layer(2)
  th = {**th, "output": jnp.full(3, 1.0)}
  base = jaxsnn.convert(apply_fn, variables, x, th, readout="spike")
  half = base.replace(initial_potential={"output": jnp.full(base.output_shape, 0.5)})
  a, b = jaxsnn.simulate(base, x, 7), jaxsnn.simulate(half, x, 7)
  assert int(b.pos_spikes["output"].sum()) > int(a.pos_spikes["output"].sum())
  np.testing.assert_array_equal(a.pos_spikes["relu"], b.pos_spikes["relu"])  # only the output layer changed


def test_potentials_offsets_and_thresholds_are_data():
  apply_fn, variables, x, th = residual()
  snn = jaxsnn.convert(apply_fn, variables, x, th)
  jaxsnn.simulate(snn, x, 6)
  others = [snn.replace(initial_potential=0.5), snn.replace(offsets={snn.site_names[0]: 0.1}),
            snn.replace(thresholds={k: v * 0.8 for k, v in th.items()}, initial_potential=0.25)]
  with count_compiles() as compiles:
    outs = [jaxsnn.simulate(o, x, 6).outputs for o in others]
  assert compiles == []
  assert not np.array_equal(outs[0], outs[1])


def test_bad_potentials_are_rejected_with_the_site_named():
  apply_fn, variables, x, th = residual()
  with pytest.raises(ValueError, match="initial_potential must be finite"):
    jaxsnn.convert(apply_fn, variables, x, th, initial_potential=float("nan"))
  with pytest.raises(ValueError, match="initial_potential .* has shape \\(2,\\)"):
    jaxsnn.convert(apply_fn, variables, x, th, initial_potential={"ResidualConvNet/relu": np.zeros(2)})
  with pytest.raises(ValueError, match="initial_potential must be a float or a dict"):
    jaxsnn.convert(apply_fn, variables, x, th, initial_potential="half")


# ---- thresholds for a target T ---------------------------------------------------------------------------------
class Calib(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(6, (3, 3))(x))
    x = nn.relu(nn.Dense(10)(x.reshape(x.shape[0], -1)))
    return nn.Dense(4)(x)


@functools.cache
def calib_net():
  model = Calib()
  x = jax.random.normal(jax.random.key(0), (64, 5, 5, 2))
  variables = model.init(jax.random.key(1), x)
  return model.apply, variables, x


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), steps=st.sampled_from([2, 4, 8, 16, 32]), p=st.sampled_from([0.0, 0.5]),
       granularity=st.sampled_from(["site", "channel"]))
def test_thresholds_for_steps_beat_neuron_norm_on_the_error_at_T(seed, steps, p, granularity):
  rng = np.random.default_rng(seed)
  # Activations of one site: [samples, positions, channels], heavy-tailed like ReLU outputs.
  acts = np.maximum(rng.standard_t(3, (200, 4, 3)) * rng.uniform(0.1, 3, 3), 0).astype(np.float32)
  stats = jaxsnn.Stats(max={"s": jnp.asarray(acts.max(0)), "output": jnp.zeros(2)}, num_samples=200)
  base = np.asarray(jaxsnn.thresholds(stats, "neuron")["s"], np.float64)
  r = acts / np.where(base > 0, base, 1)
  counts = np.zeros((3, 3, jaxsnn.lowlatency.RATIO_BINS))
  bins = np.clip(np.floor(r * jaxsnn.lowlatency.RATIO_BINS), 0, jaxsnn.lowlatency.RATIO_BINS - 1).astype(int)
  for c in range(3):
    valid = acts[..., c] > 0
    w = np.broadcast_to(base[..., c] ** 2, acts.shape[:2])[valid]
    for k in range(3):
      np.add.at(counts[k, c], bins[..., c][valid], w * r[..., c][valid] ** k)
  hist = jaxsnn.lowlatency.RatioHistograms({"s": counts}, {"s": jnp.asarray(base, jnp.float32)}, "neuron", 200)
  tuned = np.asarray(jaxsnn.thresholds_for_steps(hist, steps, p, granularity)["s"], np.float64)
  scale = (tuned / base)[0]
  assert np.all(scale <= 1.0) and np.all(scale > 0)

  # (a) What is minimised, the error read off the histogram, is never worse than NeuronNorm's (1.0 is on the grid).
  grid = np.asarray(jaxsnn.lowlatency.DEFAULT_SCALES)
  est = jaxsnn.lowlatency.expected_error(hist, steps, p)["s"]  # [channels, scales]
  chosen = est[np.arange(3), np.abs(grid[None] - scale[:, None]).argmin(axis=1)]
  if granularity == "site":
    assert chosen.sum() <= est[:, -1].sum() + 1e-9
  else:
    assert np.all(chosen <= est[:, -1] + 1e-9)

  def error(theta):  # the exact rate-coding error at T of every activation
    q = theta / steps * np.clip(np.floor(acts * steps / theta + p), 0, steps)
    return np.sum((acts - q) ** 2)

  # (b) The true error: exact but for the few bins that straddle a level boundary.
  assert error(tuned) <= error(base) * 1.002 + 1e-9


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), steps=st.sampled_from([2, 4, 8, 16, 32]), p=st.sampled_from([0.0, 0.5]),
       granularity=st.sampled_from(["site", "channel", "neuron"]))
def test_descended_thresholds_beat_neuron_norm_on_the_relaxed_error_at_T(seed, steps, p, granularity):
  rng = np.random.default_rng(seed)
  acts = np.maximum(rng.standard_t(3, (64, 4, 3)) * rng.uniform(0.1, 3, 3), 0).astype(np.float32)
  base = {"s": jnp.asarray(acts.max(0))}
  tuned, losses = jaxsnn.descend_thresholds({"s": acts}, base, steps, p, granularity, steps=40, learning_rate=0.02)
  relaxed = lambda th: float(jaxsnn.relaxed_quantization_error(acts, th, steps, p, 0.1))  # noqa: E731
  assert relaxed(tuned["s"]) <= relaxed(base["s"]) * (1 + 1e-3)
  np.testing.assert_allclose(losses[0] * float(np.mean(acts ** 2)), relaxed(base["s"]), rtol=1e-4)


def test_ratio_histograms_and_thresholds_for_steps_on_a_network():
  apply_fn, variables, x = calib_net()
  stats = jaxsnn.calibrate(apply_fn, variables, [x[:32], x[32:]])
  hist = jaxsnn.ratio_histograms(apply_fn, variables, [x[:32], (x[32:], np.arange(32) < 20)], stats)
  assert hist.num_samples == 52
  acts = jaxsnn.analysis.site_activations(apply_fn, variables, x[:52])
  for name, counts in hist.counts.items():
    a = np.asarray(acts[name], np.float64)
    base = np.asarray(hist.base[name], np.float64)
    # every positive activation is counted once, with weight base^2, and the bins keep the moments of a / base
    r = a / np.where(base > 0, base, 1)
    for k in range(3):
      want = np.where(a > 0, base ** 2 * r ** k, 0).reshape(-1, a.shape[-1]).sum(0)
      np.testing.assert_allclose(counts[k].sum(axis=1), want, rtol=1e-5)
  th = jaxsnn.thresholds_for_steps(hist, 8, 0.5, "channel")
  snn = jaxsnn.convert(apply_fn, variables, x, th, initial_potential=0.5)
  assert set(th) == set(snn.site_names) | {"output"}
  for name in snn.site_names:
    ratio = np.asarray(th[name]) / np.where(np.asarray(hist.base[name]) > 0, np.asarray(hist.base[name]), 1)
    per_channel = ratio.reshape(-1, ratio.shape[-1])
    np.testing.assert_allclose(per_channel, per_channel[:1].repeat(len(per_channel), 0), rtol=1e-6)
    assert (per_channel <= 1.0 + 1e-6).all()


def test_descend_thresholds_lowers_the_relaxed_error():
  apply_fn, variables, x = calib_net()
  stats = jaxsnn.calibrate(apply_fn, variables, [x])
  th = jaxsnn.thresholds(stats)
  acts = jaxsnn.analysis.site_activations(apply_fn, variables, x)
  # At T = 4 from v = 0 (the paper's floor), the maxima are far from the best thresholds.
  tuned, losses = jaxsnn.descend_thresholds(acts, th, 4, 0.0, granularity="channel", steps=100, learning_rate=0.05)
  assert losses.shape == (101,) and losses[-1] < 0.8 * losses[0]
  for name in acts:
    if name == "output":
      continue
    before = float(jaxsnn.relaxed_quantization_error(acts[name], th[name], 4, 0.0))
    after = float(jaxsnn.relaxed_quantization_error(acts[name], tuned[name], 4, 0.0))
    assert after < before
  with pytest.raises(ValueError, match="granularity must be one of"):
    jaxsnn.descend_thresholds(acts, th, 8, granularity="layer")


# ---- layer-wise SNN calibration ---------------------------------------------------------------------------------
def per_site_error(snn, x, steps):
  err = jaxsnn.analysis.conversion_error(snn, x, jaxsnn.simulate(snn, x, steps))
  return {k: float(v.mean_abs) for k, v in err.items()}


@pytest.mark.parametrize("target", ["offset", "potential"])
def test_calibrate_snn_reduces_the_mean_error_at_small_T_using_only_its_batches(target):
  apply_fn, variables, x = random_net(11)
  x = jnp.concatenate([x, jax.random.normal(jax.random.key(5), (56,) + x.shape[1:])])
  train, held_out = x[:48], x[48:]
  th = jaxsnn.thresholds(jaxsnn.calibrate(apply_fn, variables, [train]))
  snn = jaxsnn.convert(apply_fn, variables, train, th)
  steps = 6
  calibrated = jaxsnn.calibrate_snn(snn, [train[:24], train[24:]], steps, target=target)
  assert calibrated.traced == snn.traced  # only data changed
  # The mean error of every site on held-out inputs, before and after.
  ann = jaxsnn.analysis.site_activations(apply_fn, variables, held_out)

  def bias(net):
    tr = jaxsnn.simulate(net, held_out, steps)
    return {k: abs(float(np.mean((tr.pos_spikes[k] - tr.neg_spikes[k]) * net.thresholds[k] / steps)
                         - np.mean(ann[k]))) for k in net.site_names}

  before, after = bias(snn), bias(calibrated)
  assert sum(after.values()) < 0.5 * sum(before.values()), (before, after)
  # it reads only the batches it is given: changing anything else changes nothing
  again = jaxsnn.calibrate_snn(snn, [train[:24], train[24:]], steps, target=target)
  for k in snn.site_names:
    np.testing.assert_array_equal(again.offsets[k], calibrated.offsets[k])
    np.testing.assert_array_equal(again.initial_potential[k], calibrated.initial_potential[k])


def test_calibrate_snn_errors():
  apply_fn, variables, x = random_net(2)
  snn = jaxsnn.convert(apply_fn, variables, x, jaxsnn.thresholds(jaxsnn.calibrate(apply_fn, variables, [x])))
  with pytest.raises(ValueError, match="target must be one of"):
    jaxsnn.calibrate_snn(snn, [x], 4, target="bias")
  with pytest.raises(ValueError, match="iterable of input batches"):
    jaxsnn.calibrate_snn(snn, x, 4)
  with pytest.raises(ValueError, match="batches is empty"):
    jaxsnn.calibrate_snn(snn, [], 4)
  with pytest.raises(ValueError, match="num_steps must be a positive int"):
    jaxsnn.calibrate_snn(snn, [x], 0)


# ---- non-finite inputs ------------------------------------------------------------------------------------------
def test_non_finite_inputs_read_out_nan_and_count_as_wrong():
  apply_fn, variables, x, th = residual()
  snn = jaxsnn.convert(apply_fn, variables, x, th)
  bad = x.at[1, 2, 3, 0].set(jnp.nan).at[3, 0, 0, 1].set(jnp.inf)
  trace = jaxsnn.simulate(snn, bad, 9, block_size=4)
  out = np.asarray(trace.outputs)
  assert np.isnan(out[:, [1, 3]]).all() and np.isfinite(out[:, [0, 2, 4]]).all()
  np.testing.assert_array_equal(out[:, [0, 2, 4]], np.asarray(jaxsnn.simulate(snn, x, 9).outputs)[:, [0, 2, 4]])
  labels = np.asarray(apply_fn(variables, x)).argmax(-1)
  with pytest.warns(UserWarning, match="2 of 5 examples had a NaN or infinite input"):
    res = jaxsnn.evaluate(snn, [(bad, labels)], 9)
  assert res["non_finite"] == 2 and res["correct"].max() <= 3


# ---- end-to-end tuning -------------------------------------------------------------------------------------------
def test_surrogate_neurons_spike_exactly_like_the_originals():
  from jaxsnn._src import lowlatency
  import dataclasses
  apply_fn, variables, x, th = residual()
  for neuron in (jaxsnn.SNM(), jaxsnn.IF()):
    snn = jaxsnn.convert(apply_fn, variables, x, th, neuron=neuron, initial_potential=0.5)
    twin = dataclasses.replace(snn, neuron=lowlatency._surrogate(neuron, 0.5))
    a, b = jaxsnn.simulate(snn, x, 12), jaxsnn.simulate(twin, x, 12)
    np.testing.assert_array_equal(a.outputs, b.outputs)
    for k in a.pos_spikes:
      np.testing.assert_array_equal(a.pos_spikes[k], b.pos_spikes[k])
      np.testing.assert_array_equal(a.neg_spikes[k], b.neg_spikes[k])


def test_tune_snn_lowers_the_distance_to_the_ann_and_changes_only_data():
  apply_fn, variables, x = calib_net()
  th = jaxsnn.thresholds(jaxsnn.calibrate(apply_fn, variables, [x]))
  snn = jaxsnn.convert(apply_fn, variables, x, th, initial_potential=0.5)
  tuned, losses = jaxsnn.tune_snn(snn, [x[:32], x[32:]], 4, steps=80, learning_rate=0.03)
  assert tuned.traced == snn.traced and losses.shape == (80,)
  ann = np.asarray(apply_fn(variables, x))
  dist = lambda net: float(np.mean((np.asarray(jaxsnn.simulate(net, x, 4).outputs[-1]) - ann) ** 2))  # noqa: E731
  assert dist(tuned) < 0.9 * dist(snn)
  with pytest.raises(ValueError, match="supports SNM and IF\\(subtract\\)"):
    jaxsnn.tune_snn(jaxsnn.convert(apply_fn, variables, x, th, neuron=jaxsnn.SignedIF()), [x], 4, steps=1)
  with pytest.raises(ValueError, match="cannot tune \\['weights'\\]"):
    jaxsnn.tune_snn(snn, [x], 4, tune=("weights",))


def test_tune_snn_resumes_from_its_checkpoint_exactly(tmp_path, monkeypatch):
  from jaxsnn._src import lowlatency
  apply_fn, variables, x = calib_net()
  th = jaxsnn.thresholds(jaxsnn.calibrate(apply_fn, variables, [x]))
  snn = jaxsnn.convert(apply_fn, variables, x, th, initial_potential=0.5)
  batches = [x[:32], x[32:]]
  whole, whole_losses = jaxsnn.tune_snn(snn, batches, 4, steps=9, learning_rate=0.03)
  path = tmp_path / "tune.npz"
  save = lowlatency._save_tune
  writes = []

  def killed_after_second_write(*args):
    save(*args)
    writes.append(args[2])
    if len(writes) == 2:
      raise KeyboardInterrupt  # a kill right after the checkpoint at step 6

  monkeypatch.setattr(lowlatency, "_save_tune", killed_after_second_write)
  with pytest.raises(KeyboardInterrupt):
    jaxsnn.tune_snn(snn, batches, 4, steps=9, learning_rate=0.03, checkpoint=path, checkpoint_every=3)
  assert writes == [3, 6] and path.exists()
  writes.append("resumed")  # past two writes: the wrapper only records now
  resumed, resumed_losses = jaxsnn.tune_snn(snn, batches, 4, steps=9, learning_rate=0.03, checkpoint=path,
                                            checkpoint_every=3)
  assert writes == [3, 6, "resumed", 9]  # it went on from step 6, not from the start
  np.testing.assert_array_equal(resumed_losses, whole_losses)
  for a, b in ((resumed.thresholds, whole.thresholds), (resumed.offsets, whole.offsets),
               (resumed.initial_potential, whole.initial_potential)):
    for k in a:
      np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
  # A finished checkpoint is a result: the same call returns it without a step.
  again, again_losses = jaxsnn.tune_snn(snn, batches, 4, steps=9, learning_rate=0.03, checkpoint=path)
  np.testing.assert_array_equal(again_losses, whole_losses)
  # Another job's checkpoint (other settings, other batches) is refused, not silently resumed.
  with pytest.raises(ValueError, match="belongs to another job"):
    jaxsnn.tune_snn(snn, batches, 4, steps=9, learning_rate=0.01, checkpoint=path)
  with pytest.raises(ValueError, match="belongs to another job"):
    jaxsnn.tune_snn(snn, [x[:32]], 4, steps=9, learning_rate=0.03, checkpoint=path)
  with pytest.raises(ValueError, match="checkpoint_every must be a positive integer"):
    jaxsnn.tune_snn(snn, batches, 4, steps=9, checkpoint=path, checkpoint_every=0)


# ---- readout delay ----------------------------------------------------------------------------------------------
def windowed(outputs, delay):
  """numpy re-statement: the mean of the per-step readout over steps min(delay, t - 1) + 1 .. t, for every t."""
  out = np.asarray(outputs, np.float64)
  steps = np.arange(1, len(out) + 1)
  cum = out * steps.reshape((-1,) + (1,) * (out.ndim - 1))
  res = np.empty_like(out)
  for t in steps:
    s = min(delay, t - 1)
    res[t - 1] = (cum[t - 1] - (cum[s - 1] if s else 0.0)) / (t - s)
  return res


@pytest.mark.parametrize("readout", ["membrane", "spike"])
def test_readout_delay_against_numpy_and_schedules_bit_identical(readout):
  apply_fn, variables, x, th = residual()
  snn = jaxsnn.convert(apply_fn, variables, x, th, readout=readout, initial_potential=0.5)
  plain = jaxsnn.simulate(snn, x, 13)
  for delay in (0, 1, 5, 12, 40):  # 12 and 40: every t reads its last step only
    delayed = snn.replace(readout_delay=delay)
    ref = jaxsnn.simulate(delayed, x, 13)
    np.testing.assert_allclose(np.asarray(ref.outputs), windowed(plain.outputs, delay), rtol=2e-6, atol=1e-6)
    for k in ref.pos_spikes:  # the delay changes the readout only, never a spike
      np.testing.assert_array_equal(ref.pos_spikes[k], plain.pos_spikes[k])
    for block in (3, 13):
      got = jaxsnn.simulate(delayed, x, 13, block_size=block)
      np.testing.assert_array_equal(np.asarray(got.outputs), np.asarray(ref.outputs))
  np.testing.assert_array_equal(np.asarray(jaxsnn.simulate(snn.replace(readout_delay=0), x, 13).outputs),
                                np.asarray(plain.outputs))  # 0 is the plain mean, bit for bit
  last = np.asarray(jaxsnn.simulate(snn.replace(readout_delay=40), x, 13).outputs)
  assert not np.allclose(last[-1], np.asarray(plain.outputs)[-1])  # the delay does change the answer


def test_readout_delay_is_data_and_bad_delays_are_rejected():
  apply_fn, variables, x, th = residual()
  snn = jaxsnn.convert(apply_fn, variables, x, th, readout_delay=2)
  assert int(snn.readout_delay) == 2
  jaxsnn.simulate(snn, x, 6)
  with count_compiles() as compiles:
    jaxsnn.simulate(snn.replace(readout_delay=4), x, 6)
    jaxsnn.simulate(snn.replace(readout_delay=np.int64(0)), x, 6)
  assert compiles == []
  for bad, match in ((-1, "must be >= 0"), (1.5, "must be an int"), (True, "must be an int"), ([1], "must be an int")):
    with pytest.raises(ValueError, match=f"readout_delay {match}"):
      snn.replace(readout_delay=bad)
  with pytest.raises(ValueError, match="readout_delay must be >= 0"):
    jaxsnn.convert(apply_fn, variables, x, th, readout_delay=-3)


def test_choose_readout_delay_picks_the_delay_that_agrees_most_with_the_ann():
  apply_fn, variables, x = random_net(4)
  x = jnp.concatenate([x, jax.random.normal(jax.random.key(9), (40,) + x.shape[1:])])
  th = jaxsnn.thresholds(jaxsnn.calibrate(apply_fn, variables, [x]))
  snn = jaxsnn.convert(apply_fn, variables, x, th, initial_potential=0.5, readout_delay=3)
  steps = 7
  chosen, agreement = jaxsnn.choose_readout_delay(snn, [x[:20], (x[20:], np.arange(len(x) - 20) % 3 > 0)], steps)
  assert agreement.shape == (steps,) and chosen.traced == snn.traced
  assert int(chosen.readout_delay) == int(np.argmax(agreement))
  # every candidate's agreement, recomputed by simulating the network with that delay (the mask drops a third)
  weight = np.concatenate([np.ones(20, bool), np.arange(len(x) - 20) % 3 > 0])
  want = np.asarray(apply_fn(variables, x)).argmax(-1)
  for d in range(steps):
    got = np.asarray(jaxsnn.simulate(snn.replace(readout_delay=d), x, steps).outputs[-1]).argmax(-1)
    assert agreement[d] == pytest.approx(((got == want) & weight).sum() / weight.sum())
  with pytest.raises(ValueError, match="batches is empty"):
    jaxsnn.choose_readout_delay(snn, [], steps)
