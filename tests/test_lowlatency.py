"""Low-latency tools (jaxsnn.lowlatency): thresholds for a target T (histogram and gradient variants), layer-wise SNN
calibration, end-to-end tuning through the simulation, the readout delay; each returns (network, report)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxsnn
from conftest import random_net


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
@given(seed=st.integers(0, 10_000), T=st.sampled_from([2, 4, 8, 16, 32]), p=st.sampled_from([0.0, 0.5]),
       granularity=st.sampled_from(["layer", "channel"]))
def test_thresholds_for_steps_beat_neuron_norm_on_the_error_at_T(seed, T, p, granularity):
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
  tuned = np.asarray(jaxsnn.thresholds_for_steps(hist, T, p, granularity=granularity)["s"], np.float64)
  scale = (tuned / base)[0]
  assert np.all(scale <= 1.0) and np.all(scale > 0)

  # (a) What is minimised, the error read off the histogram, is never worse than NeuronNorm's (1.0 is on the grid).
  grid = np.asarray(jaxsnn.lowlatency.DEFAULT_SCALES)
  est = jaxsnn.lowlatency.expected_error(hist, T, p)["s"]  # [channels, scales]
  chosen = est[np.arange(3), np.abs(grid[None] - scale[:, None]).argmin(axis=1)]
  if granularity == "layer":
    assert chosen.sum() <= est[:, -1].sum() + 1e-9
  else:
    assert np.all(chosen <= est[:, -1] + 1e-9)

  def error(theta):  # the exact rate-coding error at T of every activation
    q = theta / T * np.clip(np.floor(acts * T / theta + p), 0, T)
    return np.sum((acts - q) ** 2)

  # (b) The true error: exact but for the few bins that straddle a level boundary.
  assert error(tuned) <= error(base) * 1.002 + 1e-9


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), T=st.sampled_from([2, 4, 8, 16, 32]), p=st.sampled_from([0.0, 0.5]),
       granularity=st.sampled_from(["layer", "channel", "neuron"]))
def test_descended_thresholds_beat_neuron_norm_on_the_relaxed_error_at_T(seed, T, p, granularity):
  rng = np.random.default_rng(seed)
  acts = np.maximum(rng.standard_t(3, (64, 4, 3)) * rng.uniform(0.1, 3, 3), 0).astype(np.float32)
  base = {"s": jnp.asarray(acts.max(0))}
  tuned, report = jaxsnn.descend_thresholds({"s": acts}, base, T, p, granularity, iterations=40, learning_rate=0.02)
  relaxed = lambda th: float(jaxsnn.relaxed_quantization_error(acts, th, T, p, 0.1))  # noqa: E731
  assert relaxed(tuned["s"]) <= relaxed(base["s"]) * (1 + 1e-3)
  losses = report.details["losses"]
  np.testing.assert_allclose(losses[0] * float(np.mean(acts ** 2)), relaxed(base["s"]), rtol=1e-4)
  assert report.chose["best_loss"] == losses[-1] == min(losses) and report.num_steps == T


def test_ratio_histograms_and_thresholds_for_steps_on_a_network():
  apply_fn, variables, x = calib_net()
  stats = jaxsnn.calibrate(apply_fn, variables, [x[:32], x[32:]])
  hist = jaxsnn.ratio_histograms(apply_fn, variables, [x[:32], (x[32:], None, np.arange(32) < 20)], stats)
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
  th = jaxsnn.thresholds_for_steps(hist, 8, 0.5, granularity="channel")
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
  tuned, report = jaxsnn.descend_thresholds(acts, th, 4, 0.0, granularity="channel", iterations=100,
                                            learning_rate=0.05)
  losses = report.details["losses"]
  assert losses.shape == (101,) and losses[-1] < 0.8 * losses[0]
  assert report.tool == "descend_thresholds" and report.chose["iterations"] == 100 and report.examples == len(x)
  for name in acts:
    if name == "output":
      continue
    before = float(jaxsnn.relaxed_quantization_error(acts[name], th[name], 4, 0.0))
    after = float(jaxsnn.relaxed_quantization_error(acts[name], tuned[name], 4, 0.0))
    assert after < before
  with pytest.raises(ValueError, match="granularity must be one of"):
    jaxsnn.descend_thresholds(acts, th, 8, granularity="site")  # the one vocabulary: layer, channel, neuron


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
  calibrated, report = jaxsnn.calibrate_snn(snn, [train[:24], train[24:]], steps, target=target,
                                            granularity="channel")
  assert calibrated.traced == snn.traced  # only data changed
  assert report.tool == "calibrate_snn" and report.examples == 48 and report.num_steps == steps
  assert list(report.details["mean_abs_correction"]) == list(snn.site_names)
  # The mean error of every site on held-out inputs, before and after.
  ann = jaxsnn.analysis.site_activations(apply_fn, variables, held_out)

  def bias(net):
    tr = jaxsnn.simulate(net, held_out, steps)
    return {k: abs(float(np.mean((tr.pos_spikes[k] - tr.neg_spikes[k]) * net.thresholds[k] / steps)
                         - np.mean(ann[k]))) for k in net.site_names}

  before, after = bias(snn), bias(calibrated)
  assert sum(after.values()) < 0.5 * sum(before.values()), (before, after)
  # It reads the batches it is given, each once, and nothing else; a batch more changes the result.
  read = []

  def given():
    for b in (train[:24], train[24:]):
      read.append(1)
      yield b

  again, _ = jaxsnn.calibrate_snn(snn, given(), steps, target=target, granularity="channel")
  assert len(read) == 2
  for k in snn.site_names:
    np.testing.assert_array_equal(again.offsets[k], calibrated.offsets[k])
    np.testing.assert_array_equal(again.initial_potential[k], calibrated.initial_potential[k])
  more, _ = jaxsnn.calibrate_snn(snn, [train[:24], train[24:], held_out], steps, target=target,
                                 granularity="channel")
  assert any(not np.array_equal(more.offsets[k], calibrated.offsets[k])
             or not np.array_equal(more.initial_potential[k], calibrated.initial_potential[k]) for k in snn.site_names)


def test_calibrate_snn_errors():
  apply_fn, variables, x = random_net(2)
  snn = jaxsnn.convert(apply_fn, variables, x, jaxsnn.thresholds(jaxsnn.calibrate(apply_fn, variables, [x])))
  with pytest.raises(ValueError, match="target must be one of"):
    jaxsnn.calibrate_snn(snn, [x], 4, target="bias")
  with pytest.raises(ValueError, match="iterable of batches"):
    jaxsnn.calibrate_snn(snn, x, 4)
  with pytest.raises(ValueError, match="batches is empty"):
    jaxsnn.calibrate_snn(snn, [], 4)
  with pytest.raises(ValueError, match="num_steps must be a positive int"):
    jaxsnn.calibrate_snn(snn, [x], 0)


# ---- end-to-end tuning -------------------------------------------------------------------------------------------
def test_tune_snn_lowers_the_distance_to_the_ann_and_changes_only_data():
  apply_fn, variables, x = calib_net()
  th = jaxsnn.thresholds(jaxsnn.calibrate(apply_fn, variables, [x]))
  snn = jaxsnn.convert(apply_fn, variables, x, th, initial_potential=0.5)
  tuned, report = jaxsnn.tune_snn(snn, [x[:32], x[32:]], 4, iterations=80, learning_rate=0.03)
  assert tuned.traced == snn.traced and report.details["losses"].shape == (80,) and report.examples == 64
  ann = np.asarray(apply_fn(variables, x))
  dist = lambda net: float(np.mean((np.asarray(jaxsnn.simulate(net, x, 4).outputs[-1]) - ann) ** 2))  # noqa: E731
  assert dist(tuned) < 0.9 * dist(snn)
  # Every neuron's firing decision takes the surrogate, so any neuron tunes (here the signed IF without memory).
  signed, _ = jaxsnn.tune_snn(jaxsnn.convert(apply_fn, variables, x, th, neuron=jaxsnn.SignedIF()), [x], 4,
                              iterations=2)
  assert signed.neuron is jaxsnn.SignedIF()
  with pytest.raises(ValueError, match="cannot tune \\['weights'\\]"):
    jaxsnn.tune_snn(snn, [x], 4, tune=("weights",))


def test_tune_snn_resumes_from_its_checkpoint_exactly(tmp_path, monkeypatch):
  from jaxsnn._src import loop as tuning  # the loop writes the checkpoints
  apply_fn, variables, x = calib_net()
  th = jaxsnn.thresholds(jaxsnn.calibrate(apply_fn, variables, [x]))
  snn = jaxsnn.convert(apply_fn, variables, x, th, initial_potential=0.5)
  batches = [x[:32], x[32:]]
  whole, whole_report = jaxsnn.tune_snn(snn, batches, 4, iterations=9, learning_rate=0.03)
  whole_losses = whole_report.details["losses"]
  path = tmp_path / "tune.npz"
  save = tuning.save_checkpoint
  writes = []

  def killed_after_second_write(path, job, tree):
    save(path, job, tree)
    writes.append(tree["step"])
    if len(writes) == 2:
      raise KeyboardInterrupt  # a kill right after the checkpoint at step 6

  monkeypatch.setattr(tuning, "save_checkpoint", killed_after_second_write)
  with pytest.raises(KeyboardInterrupt):
    jaxsnn.tune_snn(snn, batches, 4, iterations=9, learning_rate=0.03, checkpoint=path, checkpoint_every=3)
  assert writes == [3, 6] and path.exists()
  writes.append("resumed")  # past two writes: the wrapper only records now
  resumed, resumed_report = jaxsnn.tune_snn(snn, batches, 4, iterations=9, learning_rate=0.03, checkpoint=path,
                                            checkpoint_every=3)
  resumed_losses = resumed_report.details["losses"]
  assert writes == [3, 6, "resumed", 9]  # it went on from step 6, not from the start
  np.testing.assert_array_equal(resumed_losses, whole_losses)
  for a, b in ((resumed.thresholds, whole.thresholds), (resumed.offsets, whole.offsets),
               (resumed.initial_potential, whole.initial_potential)):
    for k in a:
      np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
  # A finished checkpoint is a result: the same call returns it without a step.
  again, again_report = jaxsnn.tune_snn(snn, batches, 4, iterations=9, learning_rate=0.03, checkpoint=path)
  np.testing.assert_array_equal(again_report.details["losses"], whole_losses)
  # Another job's checkpoint (other settings, other batches) is refused, not silently resumed.
  with pytest.raises(ValueError, match="belongs to another job"):
    jaxsnn.tune_snn(snn, batches, 4, iterations=9, learning_rate=0.01, checkpoint=path)
  with pytest.raises(ValueError, match="belongs to another job"):
    jaxsnn.tune_snn(snn, [x[:32]], 4, iterations=9, learning_rate=0.03, checkpoint=path)
  with pytest.raises(ValueError, match="checkpoint_every must be a positive int"):
    jaxsnn.tune_snn(snn, batches, 4, iterations=9, checkpoint=path, checkpoint_every=0)


# ---- readout delay ----------------------------------------------------------------------------------------------


def test_choose_readout_delay_picks_the_delay_that_agrees_most_with_the_ann():
  apply_fn, variables, x = random_net(4)
  x = jnp.concatenate([x, jax.random.normal(jax.random.key(9), (40,) + x.shape[1:])])
  th = jaxsnn.thresholds(jaxsnn.calibrate(apply_fn, variables, [x]))
  snn = jaxsnn.convert(apply_fn, variables, x, th, initial_potential=0.5, readout_delay=3)
  steps = 7
  chosen, report = jaxsnn.choose_readout_delay(snn, [x[:20], (x[20:], None, np.arange(len(x) - 20) % 3 > 0)], steps)
  agreement = report.details["agreement"]
  assert agreement.shape == (steps,) and chosen.traced == snn.traced
  assert report.chose == {"readout_delay": int(chosen.readout_delay)} and report.agreement == agreement.max()
  assert int(chosen.readout_delay) == int(np.argmax(agreement))
  # every candidate's agreement, recomputed by simulating the network with that delay (the mask drops a third)
  weight = np.concatenate([np.ones(20, bool), np.arange(len(x) - 20) % 3 > 0])
  want = np.asarray(apply_fn(variables, x)).argmax(-1)
  for d in range(steps):
    got = np.asarray(jaxsnn.simulate(snn.replace(readout_delay=d), x, steps).outputs[-1]).argmax(-1)
    assert agreement[d] == pytest.approx(((got == want) & weight).sum() / weight.sum())
  with pytest.raises(ValueError, match="batches is empty"):
    jaxsnn.choose_readout_delay(snn, [], steps)


# ---- fine-tuning the weights through the SNN ---------------------------------------------------------------------
def finetune_setup():
  apply_fn, variables, x = random_net(11)
  rng = np.random.default_rng(0)
  data = jnp.asarray(rng.normal(size=(48,) + x.shape[1:]), jnp.float32)
  # The ANN's classes permuted: labels it gets wrong, which training can fit (mostly through the output layer).
  labels = ((np.asarray(apply_fn(variables, data)).argmax(-1) + 1) % 3).astype(np.int32)
  snn, _ = jaxsnn.recipes.low_latency(apply_fn, variables, [data], 4, check_examples=0)
  batches = [(data[i % 3 * 16:(i % 3 + 1) * 16], labels[i % 3 * 16:(i % 3 + 1) * 16]) for i in range(60)]
  return snn, data, labels, batches


def test_finetune_fits_the_labels_through_the_snn_and_keeps_the_best_on_validation():
  snn, data, labels, batches = finetune_setup()
  before = jaxsnn.evaluate(snn, [(data, labels)], 4).accuracy[-1]
  tuned, report = jaxsnn.finetune(snn, batches, 4, iterations=60, learning_rate=1e-2, validation=[(data, labels)],
                                  validate_every=20)
  after = jaxsnn.evaluate(tuned, [(data, labels)], 4).accuracy[-1]
  assert after > before + 0.2, (before, after)
  losses = report.details["losses"]
  assert losses.shape == (60,) and losses[-10:].mean() < 0.7 * losses[:10].mean()
  assert [s for s, _ in report.details["validation"]] == [0, 20, 40, 60]
  assert report.chose["best_validation_accuracy"] == max(a for _, a in report.details["validation"]) == after
  # Only the variables changed; thresholds, potentials, offsets and the delay are the recipe's.
  assert tuned.traced == snn.traced and int(tuned.readout_delay) == int(snn.readout_delay)
  for name in snn.site_names:
    np.testing.assert_array_equal(tuned.thresholds[name], snn.thresholds[name])
    np.testing.assert_array_equal(tuned.initial_potential[name], snn.initial_potential[name])
  with pytest.raises(ValueError, match="loss='labels' needs labelled batches"):
    jaxsnn.finetune(snn, [data], 4, iterations=1)
  ann_tuned, _ = jaxsnn.finetune(snn, [data] * 3, 4, iterations=3, loss="ann")  # no labels needed
  assert ann_tuned.traced == snn.traced


def test_finetune_and_tune_snn_compile_once_per_network_not_per_call():
  from conftest import count_compiles
  snn, data, labels, batches = finetune_setup()
  kw = dict(learning_rate=1e-2, validation=[(data, labels)], validate_every=2)
  first, _ = jaxsnn.finetune(snn, batches[:2], 4, iterations=2, **kw)
  tuned, _ = jaxsnn.tune_snn(snn, [data[:16], data[16:32]], 4, iterations=2)
  with count_compiles() as compiles:
    again, _ = jaxsnn.finetune(snn, batches[:2], 4, iterations=2, **kw)  # a new call: nothing compiles again
    jaxsnn.finetune(snn, batches[:2], 4, iterations=2, **dict(kw, learning_rate=3e-3))  # the rate is data
    jaxsnn.tune_snn(snn, [data[:16], data[16:32]], 4, iterations=2, learning_rate=0.05)
    jaxsnn.tune_snn(tuned, [data[:16], data[16:32]], 4, iterations=2)  # other thresholds: data too
  assert compiles == [], len(compiles)
  jax.tree_util.tree_map(np.testing.assert_array_equal, first.variables, again.variables)


def test_finetune_cycles_its_batches_in_epochs_and_says_so():
  snn, data, labels, batches = finetune_setup()
  three = batches[:3]
  cycled, report = jaxsnn.finetune(snn, three, 4, iterations=7, learning_rate=1e-2)
  spelled, spelled_report = jaxsnn.finetune(snn, [three[i % 3] for i in range(7)], 4, iterations=7, learning_rate=1e-2)
  assert report.chose["epochs"] == 3 and spelled_report.chose["epochs"] == 1
  np.testing.assert_array_equal(report.details["losses"], spelled_report.details["losses"])
  jax.tree_util.tree_map(np.testing.assert_array_equal, cycled.variables, spelled.variables)
  once, once_report = jaxsnn.finetune(snn, iter(three), 4, iterations=7, learning_rate=1e-2)  # one-shot: kept, replayed
  np.testing.assert_array_equal(once_report.details["losses"], report.details["losses"])
  with pytest.raises(ValueError, match="jaxsnn.finetune: batches is empty"):
    jaxsnn.finetune(snn, [], 4, iterations=1)


def test_finetune_resumes_from_its_checkpoint_exactly(tmp_path, monkeypatch):
  from jaxsnn._src import loop as tuning  # the loop writes the checkpoints
  snn, data, labels, batches = finetune_setup()
  kw = dict(iterations=12, learning_rate=1e-2, validation=[(data, labels)], validate_every=4)
  whole, whole_report = jaxsnn.finetune(snn, batches, 4, **kw)
  path = tmp_path / "ft.npz"
  save, writes = tuning.save_checkpoint, []

  def killed_after_second_write(p, job, tree):
    save(p, job, tree)
    writes.append(tree["step"])
    if len(writes) == 2:
      raise KeyboardInterrupt

  monkeypatch.setattr(tuning, "save_checkpoint", killed_after_second_write)
  with pytest.raises(KeyboardInterrupt):
    jaxsnn.finetune(snn, batches, 4, checkpoint=path, checkpoint_every=4, **kw)
  writes.append("resumed")
  resumed, resumed_report = jaxsnn.finetune(snn, batches, 4, checkpoint=path, checkpoint_every=4, **kw)
  assert writes == [4, 8, "resumed", 12]  # went on from step 8
  np.testing.assert_array_equal(resumed_report.details["losses"], whole_report.details["losses"])
  assert resumed_report.details["validation"] == whole_report.details["validation"]
  jax.tree_util.tree_map(np.testing.assert_array_equal, resumed.variables, whole.variables)
  with pytest.raises(ValueError, match="belongs to another job"):
    jaxsnn.finetune(snn, batches, 4, checkpoint=path, **dict(kw, learning_rate=1e-3))
