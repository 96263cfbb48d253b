"""Recipes: one call equals the documented composition of the library's stages; every tool can be switched off; the
report says what each stage chose and how well the SNN agrees with its ANN."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsnn
from jaxsnn import models
from jaxsnn._src import batches as protocol
from conftest import random_net


@functools.cache
def setup():
  apply_fn, variables, x = random_net(11)
  rng = np.random.default_rng(0)
  data = jnp.asarray(rng.normal(size=(40,) + x.shape[1:]), jnp.float32)
  train = [data[i:i + 10] for i in range(0, 40, 10)]  # 4 batches of 10
  return apply_fn, variables, train


def assert_same_network(a, b):
  for field in ("thresholds", "initial_potential", "offsets"):
    jax.tree_util.tree_map(np.testing.assert_array_equal, getattr(a, field), getattr(b, field))
  assert int(a.readout_delay) == int(b.readout_delay)


def test_low_latency_is_the_documented_stack_of_stages():
  apply_fn, variables, train = setup()
  snn, report = jaxsnn.recipes.low_latency(apply_fn, variables, train, 4, snn_calibration_examples=16,
                                           delay_examples=24, check_examples=24)
  stats = jaxsnn.calibrate(apply_fn, variables, train)
  th = jaxsnn.thresholds_for_steps(jaxsnn.ratio_histograms(apply_fn, variables, train, stats), 4, 0.5,
                                   granularity="channel")
  want = jaxsnn.convert(apply_fn, variables, train[0], th, initial_potential=0.5)
  want, _ = jaxsnn.calibrate_snn(want, protocol.take(train, 16, 128, "t"), 4, granularity="channel")
  want, delay = jaxsnn.choose_readout_delay(want, protocol.take(train, 24, 128, "t"), 4)
  assert_same_network(snn, want)
  assert [s.tool for s in report.stages] == ["calibrate", "thresholds_for_steps", "convert", "calibrate_snn",
                                            "readout_delay"]
  assert report.stage("calibrate").examples == 40
  assert report.stage("calibrate_snn").examples == 16
  assert report.stage("readout_delay").chose["readout_delay"] == int(want.readout_delay)
  np.testing.assert_array_equal(report.stage("readout_delay").details["agreement"], delay.details["agreement"])
  # The agreement after each stage is measured on the same 24 training examples.
  check = protocol.take(train, 24, 128, "t")
  assert report.agreement == jaxsnn.agreement(snn, check, 4)
  assert report.stage("convert").agreement == jaxsnn.agreement(
      jaxsnn.convert(apply_fn, variables, train[0], th, initial_potential=0.5), check, 4)
  assert "readout_delay (T=4)" in str(report)


def test_every_low_latency_tool_can_be_switched_off():
  apply_fn, variables, train = setup()
  stats = jaxsnn.calibrate(apply_fn, variables, train)
  plain, report = jaxsnn.recipes.low_latency(apply_fn, variables, train, 4, t_aware_thresholds=False,
                                             snn_calibration=False, readout_delay=False, check_examples=0,
                                             stats=stats)
  assert [s.tool for s in report.stages] == ["calibrate", "convert"]
  assert report.agreement is None
  assert_same_network(plain, jaxsnn.convert(apply_fn, variables, train[0], jaxsnn.thresholds(stats),
                                            initial_potential=0.5))
  tuned, report = jaxsnn.recipes.low_latency(apply_fn, variables, train, 4, readout_delay=False, end_to_end=True,
                                             tune_examples=20, tune_iterations=3, check_examples=0, stats=stats)
  assert [s.tool for s in report.stages][-2:] == ["calibrate_snn", "tune_snn"]
  assert len(report.stage("tune_snn").details["losses"]) == 3 and report.stage("tune_snn").chose["iterations"] == 3


def test_paper_recipe_is_snm_and_neuron_norm_from_zero():
  apply_fn, variables, train = setup()
  snn, report = jaxsnn.recipes.paper(apply_fn, variables, iter(train), num_steps=8, check_examples=16)
  want = jaxsnn.convert(apply_fn, variables, train[0], jaxsnn.thresholds(jaxsnn.calibrate(apply_fn, variables, train)))
  assert snn.neuron is jaxsnn.SNM()
  assert_same_network(snn, want)
  assert 0.0 <= report.agreement <= 1.0
  assert report.stage("convert").chose["granularity"] == "neuron"
  layer, report = jaxsnn.recipes.paper(apply_fn, variables, train, neuron=jaxsnn.IF(), granularity="layer")
  assert layer.neuron is jaxsnn.IF() and report.stage("convert").chose["granularity"] == "layer"
  name = layer.site_names[0]
  assert np.unique(np.asarray(layer.thresholds[name])).size == 1


class QCFSNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = models.QCFS(levels=4, init_threshold=2.0)(nn.Dense(8)(x))
    x = nn.relu(nn.Dense(6)(x))
    return nn.Dense(3)(x)


def test_qcfs_recipe_takes_the_trained_lambda_and_calibrates_at_T():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(20, 5)), jnp.float32)
  model = QCFSNet()
  variables = model.init(jax.random.key(0), x)
  snn, report = jaxsnn.recipes.quantized(model.apply, variables, [x[:10], x[10:]], check_examples=0)
  qcfs_site = next(n for n, kind, _ in snn.site_kinds if kind == "qcfs")
  relu_site = next(n for n, kind, _ in snn.site_kinds if kind == "relu")
  np.testing.assert_array_equal(snn.thresholds[qcfs_site], np.full(8, 2.0, np.float32))
  np.testing.assert_array_equal(snn.initial_potential[qcfs_site], np.full(8, 0.5, np.float32))
  stats = jaxsnn.calibrate(model.apply, variables, [x[:10], x[10:]])
  np.testing.assert_array_equal(snn.thresholds[relu_site], jaxsnn.thresholds(stats)[relu_site])
  assert [s.tool for s in report.stages] == ["calibrate", "convert"]
  at_t, report = jaxsnn.recipes.quantized(model.apply, variables, [x[:10], x[10:]], 4, check_examples=8)
  assert [s.tool for s in report.stages][-2:] == ["calibrate_snn", "readout_delay"]
  assert report.agreement is not None
  assert report.recipe == "quantized" and report.stage("calibrate_snn").chose["granularity"] == "channel"
  with pytest.raises(ValueError, match="jaxsnn.recipes.quantized: the network has no QCFS activation"):
    jaxsnn.recipes.quantized(*setup())


def test_chain_composes_stages():
  apply_fn, variables, train = setup()
  snn = jaxsnn.convert(apply_fn, variables, train[0],
                       jaxsnn.thresholds(jaxsnn.calibrate(apply_fn, variables, train)), initial_potential=0.5)
  stage = jaxsnn.recipes.chain(functools.partial(jaxsnn.calibrate_snn, num_steps=4),
                               functools.partial(jaxsnn.choose_readout_delay, num_steps=4))
  got, (first, second) = stage(snn, train)
  want, _ = jaxsnn.calibrate_snn(snn, train, 4)
  want, _ = jaxsnn.choose_readout_delay(want, train, 4)
  assert_same_network(got, want)
  assert (first.tool, second.tool) == ("calibrate_snn", "readout_delay")
  # Closed: a chain is a stage, chains nest, and the nested reports come out flat and in order.
  nested = jaxsnn.recipes.chain(jaxsnn.recipes.chain(functools.partial(jaxsnn.calibrate_snn, num_steps=4)),
                                functools.partial(jaxsnn.choose_readout_delay, num_steps=4))
  again, report = nested(snn, train)
  assert isinstance(report, jaxsnn.RecipeReport) and [s.tool for s in report] == ["calibrate_snn", "readout_delay"]
  assert_same_network(again, want)
  with pytest.raises(TypeError, match="stage 0 is not callable"):
    jaxsnn.recipes.chain(None)


def test_a_users_own_stage_plugs_into_the_low_latency_recipe_and_reports():
  apply_fn, variables, train = setup()
  seen = []

  def halve_offsets(snn, batches):  # a stage of the user's own: it sees the recipe's network and batches
    seen.append(len(list(batches)))
    snn = snn.replace(offsets={k: v * 0.5 for k, v in snn.offsets.items()})
    return snn, jaxsnn.Report("halve_offsets", {"factor": 0.5})

  calib, delay = jaxsnn.recipes.low_latency_stages(4)
  snn, report = jaxsnn.recipes.low_latency(apply_fn, variables, train, 4, stages=(calib, halve_offsets, delay),
                                           check_examples=8)
  tools = [s.tool for s in report.stages]
  assert tools[-3:] == ["calibrate_snn", "halve_offsets", "readout_delay"], tools
  mine = report.stage("halve_offsets")
  assert mine.chose == {"factor": 0.5} and mine.agreement is not None and mine.seconds > 0  # checked like the rest
  assert seen  # it ran, on the recipe's training batches
  # The same recipe without the user's stage differs only by it: its chain is the default one.
  default, default_report = jaxsnn.recipes.low_latency(apply_fn, variables, train, 4, check_examples=8)
  assert [s.tool for s in default_report.stages][-2:] == ["calibrate_snn", "readout_delay"]


def test_recipe_errors():
  apply_fn, variables, train = setup()
  with pytest.raises(ValueError, match="num_steps must be a positive int"):
    jaxsnn.recipes.low_latency(apply_fn, variables, train, 0)
  with pytest.raises(ValueError, match=r"initial_potential must be a fraction"):
    jaxsnn.recipes.low_latency(apply_fn, variables, train, 4, initial_potential=1.5)
  with pytest.raises(ValueError, match="train_batches is empty|batches is empty"):
    jaxsnn.recipes.paper(apply_fn, variables, [])
  with pytest.raises(ValueError, match="but got an array"):
    jaxsnn.recipes.paper(apply_fn, variables, train[0])
