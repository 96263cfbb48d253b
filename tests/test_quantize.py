"""Conversion-aware fine-tuning (jaxsnn.quantize_for_conversion) and the few-steps recipe: the rewrite of every ReLU
site into a QCFS activation with a trainable λ, in every model style, exact conversion at T = L, resuming after a
kill, clear refusals, and jaxsnn.recipes.few_steps's report."""

import re

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxsnn
from jaxsnn._src import loop

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(64, 4)), jnp.float32)
Y = jnp.asarray(RNG.integers(0, 3, 64), jnp.int32)
BATCHES = [(X[i:i + 16], Y[i:i + 16]) for i in range(0, 64, 16)]


def dense_params(seed=0):
  rng = np.random.default_rng(seed)
  return {"layer1": {"w": jnp.asarray(rng.normal(size=(4, 16)) / 2, jnp.float32), "b": jnp.zeros(16)},
          "layer2": {"w": jnp.asarray(rng.normal(size=(16, 8)) / 4, jnp.float32)},
          "head": {"w": jnp.asarray(rng.normal(size=(8, 3)) / 4, jnp.float32)}}


def plain_apply(p, x):
  h = jax.nn.relu(x @ p["layer1"]["w"] + p["layer1"]["b"])
  return jax.nn.relu(h @ p["layer2"]["w"]) @ p["head"]["w"]


class LinenNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Dense(16)(x)))
    return nn.Dense(3)(nn.relu(nn.Dense(8)(x)))


class NNXNet(nnx.Module):
  def __init__(self, rngs):
    self.encoder = nnx.Linear(4, 16, rngs=rngs)
    self.hidden = nnx.Linear(16, 8, rngs=rngs)
    self.head = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    return self.head(nnx.relu(self.hidden(nnx.relu(self.encoder(x)))))


def linen_net():
  model = LinenNet()
  variables = model.init(jax.random.key(0), X)
  stats = variables["batch_stats"]["BatchNorm_0"]
  variables = {"params": variables["params"],
               "batch_stats": {"BatchNorm_0": {"mean": stats["mean"] + 0.1, "var": stats["var"] * 2.0}}}
  return model.apply, variables


def nnx_net():
  graphdef, state = nnx.split(NNXNet(nnx.Rngs(0)))
  return (lambda s, x: nnx.merge(graphdef, s)(x)), state


def equinox_net():
  return (lambda m, x: jax.vmap(m)(x)), eqx.nn.MLP(4, 3, 16, 2, key=jax.random.key(0))


STYLES = {"linen": linen_net, "nnx": nnx_net, "equinox": equinox_net, "plain": lambda: (plain_apply, dense_params())}


@pytest.mark.parametrize("style", sorted(STYLES))
def test_every_model_style_quantizes_converts_and_keeps_its_module_paths(style):
  apply_fn, variables = STYLES[style]()
  relu_sites = [k for k in jaxsnn.calibrate(apply_fn, variables, BATCHES).max if k != "output"]
  apply_q, variables_q, report = jaxsnn.quantize_for_conversion(apply_fn, variables, BATCHES, levels=4, iterations=3,
                                                                learning_rate=1e-2)
  expected = tuple(re.sub(r"relu(_\d+)?$", r"qcfs\1", name) for name in relu_sites)  # ".../relu_1" -> ".../qcfs_1"
  assert report.chose["sites"] == expected == tuple(variables_q.thresholds)
  snn, _ = jaxsnn.recipes.quantized(apply_q, variables_q, BATCHES, check_examples=0)
  assert snn.site_names == expected  # every site found as a QCFS site, named by the ANN's module path
  assert all(kind == "qcfs" and levels == 4 for _, kind, levels in snn.site_kinds)
  for name in expected:  # the default granularity: one λ per neuron, the site's thresholds
    assert variables_q.thresholds[name].shape == snn.thresholds[name].shape
    np.testing.assert_array_equal(snn.thresholds[name], variables_q.thresholds[name])
  # The rewritten network is the quantised ANN: its values are QCFS levels of each λ (checked at the last site).
  assert apply_q(variables_q, X).shape == (64, 3)


def test_the_quantised_network_is_the_relu_network_with_qcfs_at_every_site():
  p = dense_params()
  apply_q, variables_q, _ = jaxsnn.quantize_for_conversion(plain_apply, p, BATCHES, levels=4, iterations=0)
  lam = variables_q.thresholds
  h = jaxsnn.qcfs(X @ p["layer1"]["w"] + p["layer1"]["b"], lam["layer1/qcfs"], 4)
  want = jaxsnn.qcfs(h @ p["layer2"]["w"], lam["layer2/qcfs"], 4) @ p["head"]["w"]
  np.testing.assert_allclose(apply_q(variables_q, X), want, rtol=1e-6, atol=1e-6)
  # Every λ starts at the 99.9th percentile of its site's positive activations on the calibration batches.
  z = np.maximum(np.asarray(X @ p["layer1"]["w"] + p["layer1"]["b"]), 0)
  np.testing.assert_allclose(np.asarray(lam["layer1/qcfs"]), np.percentile(z[z > 0], 99.9), rtol=2 ** -8)


def grid_apply(p, x):  # one ReLU site of shape [3, 4]: 12 neurons in 4 channels
  h = jax.nn.relu((x @ p["w"]).reshape(x.shape[0], 3, 4))
  return h.reshape(x.shape[0], 12) @ p["head"]


@pytest.mark.parametrize("granularity,shape", [("neuron", (3, 4)), ("channel", (4,)), ("layer", ())])
def test_channel_granularity_trains_one_lambda_per_channel_and_converts_with_it(granularity, shape):
  p = {"w": jnp.asarray(RNG.normal(size=(4, 12)) / 2, jnp.float32),
       "head": jnp.asarray(RNG.normal(size=(12, 3)) / 4, jnp.float32)}
  apply_q, variables_q, report = jaxsnn.quantize_for_conversion(grid_apply, p, BATCHES, levels=2, iterations=6,
                                                                learning_rate=3e-2, granularity=granularity,
                                                                loss="both")
  lam = np.asarray(variables_q.thresholds["qcfs"])
  assert lam.shape == shape and report.chose["granularity"] == granularity
  assert lam.size == 1 or len(np.unique(lam)) > 1  # the λ's moved apart
  snn, _ = jaxsnn.recipes.quantized(apply_q, variables_q, BATCHES, check_examples=0)
  np.testing.assert_array_equal(snn.thresholds["qcfs"], np.broadcast_to(lam, (3, 4)))
  with pytest.raises(ValueError, match=r"granularity must be one of \('neuron', 'channel', 'layer'\); got 'site'"):
    jaxsnn.quantize_for_conversion(plain_apply, p, BATCHES, levels=2, iterations=1, granularity="site")


@pytest.mark.parametrize("neuron", [jaxsnn.IF(), jaxsnn.SNM()])
@pytest.mark.parametrize("levels,lam", [(4, 1.0), (8, 2.0), (2, 0.5), (4, 4.0)])
def test_spike_counts_equal_the_quantised_levels_exactly_at_T_equal_L_on_dyadic_data(neuron, levels, lam):
  rng = np.random.default_rng(levels)
  x = jnp.asarray(rng.integers(-8, 9, (16, 4)) / 4, jnp.float32)
  p = {"layer1": {"w": jnp.asarray(rng.integers(-8, 9, (4, 6)) / 8, jnp.float32),
                  "b": jnp.asarray(rng.integers(-4, 5, (6,)) / 8, jnp.float32)},
       "head": {"w": jnp.asarray(rng.integers(-8, 9, (6, 3)) / 8, jnp.float32),
                "b": jnp.asarray(rng.integers(-4, 5, (3,)) / 8, jnp.float32)}}
  apply_fn = lambda p, x: jax.nn.relu(x @ p["layer1"]["w"] + p["layer1"]["b"]) @ p["head"]["w"] + p["head"]["b"]  # noqa: E731
  apply_q, variables_q, _ = jaxsnn.quantize_for_conversion(apply_fn, p, [x], levels=levels, iterations=0)
  variables_q = jaxsnn.QuantizedVariables(variables_q.variables, {"layer1/qcfs": jnp.float32(lam)})  # dyadic λ
  snn, _ = jaxsnn.recipes.quantized(apply_q, variables_q, [x], neuron=neuron, check_examples=0)
  trace = jaxsnn.simulate(snn, x, levels)
  counts = np.asarray(trace.pos_spikes["layer1/qcfs"]) - np.asarray(trace.neg_spikes["layer1/qcfs"])
  level = np.asarray(jaxsnn.qcfs(x @ p["layer1"]["w"] + p["layer1"]["b"], lam, levels)) * levels / lam
  np.testing.assert_array_equal(counts, level)  # exact, not close
  assert np.any((level > 0) & (level < levels))  # the test sees levels strictly inside the range
  np.testing.assert_array_equal(np.asarray(trace.outputs[-1]), np.asarray(apply_q(variables_q, x)))


def test_a_network_without_relu_is_returned_untouched():
  w = jnp.ones((4, 3))
  linear = lambda v, x: x @ v  # noqa: E731
  apply_q, variables_q, report = jaxsnn.quantize_for_conversion(linear, w, BATCHES, levels=4, iterations=5)
  assert apply_q is linear and variables_q is w and report.chose["sites"] == ()
  already = lambda v, x: jaxsnn.qcfs(x @ v, 1.0, 4) @ v.T  # noqa: E731  (QCFS sites only: nothing to rewrite)
  apply_q, variables_q, report = jaxsnn.quantize_for_conversion(already, w, BATCHES, levels=4, iterations=5)
  assert apply_q is already and variables_q is w and "no ReLU site" in report.chose["note"]


def test_what_cannot_be_converted_is_refused_naming_the_operation():
  p = dense_params()
  tanh_net = lambda p, x: jnp.tanh(jax.nn.relu(x @ p["layer1"]["w"]) @ p["layer2"]["w"]) @ p["head"]["w"]  # noqa: E731
  with pytest.raises(jaxsnn.ConversionError, match=r"(?s)jaxsnn.quantize_for_conversion: primitive 'tanh'.*"
                                                   r"in module: layer2"):
    jaxsnn.quantize_for_conversion(tanh_net, p, BATCHES, levels=4, iterations=1)


def test_bad_arguments_are_clear_errors():
  p = dense_params()
  with pytest.raises(ValueError, match="levels must be a positive int"):
    jaxsnn.quantize_for_conversion(plain_apply, p, BATCHES, levels=0, iterations=1)
  with pytest.raises(ValueError, match="loss must be one of"):
    jaxsnn.quantize_for_conversion(plain_apply, p, BATCHES, levels=4, iterations=1, loss="mse")
  with pytest.raises(ValueError, match="loss='labels' needs labelled batches"):
    jaxsnn.quantize_for_conversion(plain_apply, p, [X], levels=4, iterations=1, loss="labels")
  with pytest.raises(ValueError, match="pass calibration="):
    jaxsnn.quantize_for_conversion(plain_apply, p, iter(BATCHES), levels=4, iterations=1)
  with pytest.raises(ValueError, match="validation: a batch has no labels"):
    jaxsnn.quantize_for_conversion(plain_apply, p, BATCHES, levels=4, iterations=1, validation=[X])
  # A one-shot iterator of step batches works with separate calibration batches (and the distillation needs no
  # labels).
  _, _, report = jaxsnn.quantize_for_conversion(plain_apply, p, iter([X, X]), levels=4, iterations=3, calibration=[X])
  assert report.chose["epochs"] == 2


def test_weights_and_lambda_train_and_batchnorm_statistics_stay():
  apply_fn, variables = linen_net()
  for loss in ("distill", "labels", "both"):
    _, variables_q, report = jaxsnn.quantize_for_conversion(apply_fn, variables, BATCHES, levels=1, iterations=16,
                                                            learning_rate=1e-2, loss=loss)
    losses = report.details["losses"]
    assert np.mean(losses[-4:]) < np.mean(losses[:4]), (loss, losses)  # an epoch is 4 batches
    jax.tree_util.tree_map(np.testing.assert_array_equal, variables_q.variables["batch_stats"],
                           variables["batch_stats"])
    assert not np.array_equal(variables_q.variables["params"]["Dense_0"]["kernel"],
                              variables["params"]["Dense_0"]["kernel"])
    assert report.chose["lambda"] != report.chose["initial_lambda"]
    assert report.chose["trained_leaves"] == 8  # two Dense, one Dense head, BatchNorm's scale and bias


def test_best_iterate_on_validation_is_returned():
  p = dense_params()
  apply_q, variables_q, report = jaxsnn.quantize_for_conversion(plain_apply, p, BATCHES, levels=4, iterations=12,
                                                                learning_rate=3e-2, loss="labels",
                                                                validation=BATCHES, validate_every=4)
  history = report.details["validation"]
  assert [s for s, _ in history] == [0, 4, 8, 12]
  best = max(a for _, a in history)
  assert report.chose["best_validation_accuracy"] == best
  logits = apply_q(variables_q, X)
  assert float(jnp.mean(jnp.argmax(logits, -1) == Y)) == best


def test_fine_tuning_resumes_bit_for_bit_after_a_kill(tmp_path, monkeypatch):
  p = dense_params()
  kw = dict(levels=4, iterations=12, learning_rate=1e-2, loss="both", validation=BATCHES[:2], validate_every=4)
  _, whole, whole_report = jaxsnn.quantize_for_conversion(plain_apply, p, BATCHES, **kw)
  path = tmp_path / "q.npz"
  save, writes = loop.save_checkpoint, []

  def killed_after_second_write(path_, job, tree):
    save(path_, job, tree)
    writes.append(tree["step"])
    if len(writes) == 2:
      raise KeyboardInterrupt

  monkeypatch.setattr(loop, "save_checkpoint", killed_after_second_write)
  with pytest.raises(KeyboardInterrupt):
    jaxsnn.quantize_for_conversion(plain_apply, p, BATCHES, checkpoint=path, checkpoint_every=4, **kw)
  writes.append("resumed")
  _, resumed, resumed_report = jaxsnn.quantize_for_conversion(plain_apply, p, BATCHES, checkpoint=path,
                                                              checkpoint_every=4, **kw)
  assert writes == [4, 8, "resumed", 12]  # went on from step 8
  np.testing.assert_array_equal(resumed_report.details["losses"], whole_report.details["losses"])
  assert resumed_report.details["validation"] == whole_report.details["validation"]
  jax.tree_util.tree_map(np.testing.assert_array_equal, resumed, whole)
  with pytest.raises(ValueError, match="belongs to another job"):
    jaxsnn.quantize_for_conversion(plain_apply, p, BATCHES, checkpoint=path, **dict(kw, levels=2))


def test_few_steps_runs_every_stage_and_reports_validation_and_time(tmp_path):
  apply_fn, variables = linen_net()
  snn, report = jaxsnn.recipes.few_steps(apply_fn, variables, BATCHES, 2, validation=BATCHES[:2], iterations=4,
                                         finetune_iterations=2, checkpoint_dir=tmp_path)
  assert report.recipe == "few_steps" and report.num_steps == 2
  assert [s.tool for s in report.stages] == ["quantize_for_conversion", "convert", "calibrate_snn", "readout_delay",
                                             "finetune"]
  assert all(s.validation_accuracy is not None and 0 <= s.validation_accuracy <= 1 for s in report.stages)
  assert all(s.seconds > 0 for s in report.stages)
  assert report.stage("quantize_for_conversion").chose["levels"] == 2  # L = T by default
  assert report.stage("quantize_for_conversion").chose["granularity"] == "layer"  # the recipe's explicit choice
  assert report.stage("calibrate_snn").chose["granularity"] == "channel"
  assert all(kind == "qcfs" for _, kind, _ in snn.site_kinds)
  assert "validation accuracy" in str(report)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["finetune_L2_T2_i2.npz", "quantize_L2.npz"]
  # One quantisation reused for another T.
  quantized = jaxsnn.quantize_for_conversion(apply_fn, variables, BATCHES, levels=2, iterations=2)
  _, report4 = jaxsnn.recipes.few_steps(apply_fn, variables, BATCHES, 4, validation=BATCHES[:2],
                                        quantized=quantized, readout_delay=False)
  assert [s.tool for s in report4.stages] == ["quantize_for_conversion", "convert", "calibrate_snn"]
  with pytest.raises(ValueError, match="num_steps must be a positive int"):
    jaxsnn.recipes.few_steps(apply_fn, variables, BATCHES, 0, validation=BATCHES)
