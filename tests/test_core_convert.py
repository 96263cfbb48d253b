"""Conversion + simulation: convergence to the ANN, exact schedules, no recompilation, nice errors."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsnn
from jaxsnn._src import simulate as simulate_module
from random_nets import random_net, randomise_batch_stats

STEPS = (64, 128, 256, 512, 1024)


def rel_error(out, ann):
  return float(jnp.abs(out - ann).max() / jnp.abs(ann).max())


# ---- convergence on random architectures ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(20))
def test_random_architectures_converge_to_the_ann(seed):
  apply_fn, variables, x = random_net(seed, allow_max_pool=seed % 4 == 3)
  stats = jaxsnn.calibrate(apply_fn, variables, [x[:4], x[4:]])  # calibrated on the simulated inputs
  snn = jaxsnn.convert(apply_fn, variables, x, jaxsnn.thresholds(stats))
  ann = apply_fn(variables, x)
  trace = jaxsnn.simulate(snn, x, STEPS[-1], block_size=256 if seed % 2 else None)
  errors = np.array([rel_error(trace.outputs[t - 1], ann) for t in STEPS])
  assert errors[-1] < 2e-2, errors
  slope = np.polyfit(np.log(STEPS), np.log(errors), 1)[0]
  assert -1.6 < slope < -0.7, (slope, errors)  # error ~ 1/T


def test_spike_readout_converges_to_relu_of_logits():
  apply_fn, variables, x = random_net(5)
  th = jaxsnn.thresholds(jaxsnn.calibrate(apply_fn, variables, [x]))
  snn = jaxsnn.convert(apply_fn, variables, x, th, readout="spike")
  ann = apply_fn(variables, x)
  trace = jaxsnn.simulate(snn, x, 1024)
  assert rel_error(trace.outputs[-1], jnp.maximum(ann, 0)) < 2e-2
  # The spike readout is the output layer's net spike count times its threshold, averaged over time.
  net = trace.pos_spikes["output"] - trace.neg_spikes["output"]
  np.testing.assert_allclose(trace.outputs[-1], net * th["output"] / 1024, rtol=1e-5, atol=1e-6)


class PreprocessNet(nn.Module):
  """Non-affine operations on the input alone are fine: the input is a constant current, computed once."""

  @nn.compact
  def __call__(self, x):
    x = jnp.tanh(x) * x ** 2
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    h = nn.relu(nn.Dense(8)(x.reshape(x.shape[0], -1)))
    return nn.Dense(3)(jnp.concatenate([h, jnp.pad(h[:, :2], ((0, 0), (1, 1)))], axis=1))


def test_input_only_nonlinearity_concat_pad_and_slices_convert():
  model = PreprocessNet()
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 5, 5, 2))
  variables = model.init(jax.random.PRNGKey(1), x)
  apply_fn = model.apply
  th = jaxsnn.thresholds(jaxsnn.calibrate(apply_fn, variables, [x]))
  snn = jaxsnn.convert(apply_fn, variables, x, th)
  trace = jaxsnn.simulate(snn, x, 1024)
  assert rel_error(trace.outputs[-1], apply_fn(variables, x)) < 2e-2


def test_first_site_spike_counts_match_a_direct_neuron_run():
  # Dyadic inputs, weights and thresholds: every current is exact in float32, inside or outside jit.
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.integers(-8, 9, (5, 4)) / 4, jnp.float32)
  w1 = jnp.asarray(rng.integers(-8, 9, (4, 6)) / 8, jnp.float32)
  b1 = jnp.asarray(rng.integers(-4, 5, (6,)) / 8, jnp.float32)
  w2 = jnp.asarray(rng.integers(-8, 9, (6, 2)) / 8, jnp.float32)
  variables = {"w1": w1, "b1": b1, "w2": w2}
  apply_fn = lambda v, x: jax.nn.relu(x @ v["w1"] + v["b1"]) @ v["w2"]  # noqa: E731
  th = {"relu": jnp.asarray(rng.integers(1, 9, (6,)) / 4, jnp.float32)}
  snn = jaxsnn.convert(apply_fn, variables, x, th)
  assert snn.site_names == ("relu",)
  trace = jaxsnn.simulate(snn, x, 50, block_size=8)
  current = x @ w1 + b1
  neuron = jaxsnn.SNM()
  state = neuron.init(current.shape)
  pos = np.zeros(current.shape, np.int32)
  neg = np.zeros(current.shape, np.int32)
  for _ in range(50):
    state, s = neuron.step(th["relu"], state, current)
    pos, neg = pos + np.asarray(s > 0), neg + np.asarray(s < 0)
  assert pos.sum() > 0  # (a constant current never gives an SNM a reason to send a negative spike)
  np.testing.assert_array_equal(trace.pos_spikes["relu"], pos)
  np.testing.assert_array_equal(trace.neg_spikes["relu"], neg)
  # membrane readout after 50 steps = the output layer applied to the mean spike amplitude
  net = (pos - neg) * np.asarray(th["relu"])
  np.testing.assert_allclose(trace.outputs[-1], net @ np.asarray(w2) / 50, rtol=1e-6, atol=1e-6)


def test_accuracy_vs_time():
  apply_fn, variables, x = random_net(2)
  th = jaxsnn.thresholds(jaxsnn.calibrate(apply_fn, variables, [x]))
  trace = jaxsnn.simulate(jaxsnn.convert(apply_fn, variables, x, th), x, 40)
  labels = jnp.argmax(apply_fn(variables, x), -1)
  acc = jaxsnn.accuracy_vs_time(trace, labels)
  assert acc.shape == (40,)
  want = np.array([(np.argmax(np.asarray(trace.outputs[t]), -1) == np.asarray(labels)).mean() for t in range(40)])
  np.testing.assert_array_equal(np.asarray(acc), want)
  onehot = jax.nn.one_hot(labels, trace.outputs.shape[-1])
  np.testing.assert_array_equal(np.asarray(jaxsnn.accuracy_vs_time(trace, onehot)), want)
  with pytest.raises(ValueError, match="do not match the batch size"):
    jaxsnn.accuracy_vs_time(trace, labels[:3])


# ---- the two schedules are bit-identical ----------------------------------------------------------------------------
class ResidualConvNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(6, (3, 3))(x)))
    y = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(6, (3, 3))(x)))
    y = nn.BatchNorm(use_running_average=True)(nn.Conv(6, (3, 3))(y))
    x = nn.relu(x + y)
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(8, (3, 3), strides=2)(x))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Dense(12)(x.reshape(x.shape[0], -1)))
    return nn.Dense(4)(x)


@functools.cache
def residual_setup():
  model = ResidualConvNet()
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 8, 8, 3))
  variables = randomise_batch_stats(model.init(jax.random.PRNGKey(1), x), np.random.default_rng(0))
  th = jaxsnn.thresholds(jaxsnn.calibrate(model.apply, variables, [x]))
  return model.apply, variables, x, th


@pytest.mark.parametrize("neuron,readout", [(jaxsnn.SNM(), "membrane"), (jaxsnn.SNM(), "spike"),
                                            (jaxsnn.IF(), "membrane"), (jaxsnn.SignedIF(), "spike")])
def test_step_major_equals_layer_major_bit_for_bit(neuron, readout):
  apply_fn, variables, x, th = residual_setup()
  snn = jaxsnn.convert(apply_fn, variables, x, th, neuron=neuron, readout=readout)
  steps = 37
  ref = jaxsnn.simulate(snn, x, steps)
  assert sum(int(c.sum()) for c in ref.pos_spikes.values()) > 0
  for block in (1, 4, 16, 37, 100):  # divides, does not divide, = T, > T
    got = jaxsnn.simulate(snn, x, steps, block_size=block)
    np.testing.assert_array_equal(np.asarray(got.outputs), np.asarray(ref.outputs), err_msg=f"block {block}")
    for site in ref.pos_spikes:
      np.testing.assert_array_equal(got.pos_spikes[site], ref.pos_spikes[site], err_msg=f"{site}, block {block}")
      np.testing.assert_array_equal(got.neg_spikes[site], ref.neg_spikes[site], err_msg=f"{site}, block {block}")


def contraction_batches(fn, *args):
  """The leading (batch, or rows) size of the left operand of every matmul / convolution in the traced program of
  fn."""
  sizes = []

  def visit(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
        sizes.append(eqn.invars[0].aval.shape[0])
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        visit(sub)

  visit(jax.make_jaxpr(fn)(*args).jaxpr)
  return sizes


@pytest.mark.parametrize("block", [4, 37])
def test_exact_layer_major_runs_every_contraction_with_the_step_major_batch(block):
  # On the shapes above XLA:CPU happens to give the same bits for batched and per-step kernels, so equal outputs
  # alone could not tell the exact path from the batched one: check the program itself.
  apply_fn, variables, x, th = residual_setup()
  snn = jaxsnn.convert(apply_fn, variables, x, th)
  n = x.shape[0]
  step_major = contraction_batches(lambda s, x: jaxsnn.simulate(s, x, 37), snn, x)
  exact = contraction_batches(lambda s, x: jaxsnn.simulate(s, x, 37, block_size=block), snn, x)
  batched = contraction_batches(lambda s, x: jaxsnn.simulate(s, x, 37, block_size=block, exact=False), snn, x)
  # (a convolution with a 2x2 output runs as im2col + matmul on CPU: its rows are the batch times 4 positions)
  assert set(step_major) <= {n, 4 * n} and n in step_major
  assert set(exact) == set(step_major)
  assert block * n in batched


def test_inexact_layer_major_agrees_to_float_rounding():
  apply_fn, variables, x, th = residual_setup()
  snn = jaxsnn.convert(apply_fn, variables, x, th)
  ref = jaxsnn.simulate(snn, x, 37)
  got = jaxsnn.simulate(snn, x, 37, block_size=8, exact=False)
  np.testing.assert_allclose(np.asarray(got.outputs), np.asarray(ref.outputs), rtol=1e-4, atol=1e-5)
  total = sum(int(c.sum()) for c in ref.pos_spikes.values())
  differ = sum(int(jnp.abs(got.pos_spikes[k] - ref.pos_spikes[k]).sum()) for k in ref.pos_spikes)
  assert differ <= total * 1e-3


def test_max_pool_uses_the_cumulative_max_rule():
  apply_fn, variables, x, th = residual_setup()
  snn = jaxsnn.convert(apply_fn, variables, x, th)
  assert len(snn.max_sites) == 1
  trace = jaxsnn.simulate(snn, x, 1024, block_size=128)
  assert rel_error(trace.outputs[-1], apply_fn(variables, x)) < 2e-2


# ---- no recompilation ---------------------------------------------------------------------------------------------
def test_no_recompilation_when_only_values_change():
  apply_fn, variables, x, th = residual_setup()
  traces = []
  real = simulate_module.ir.build_program

  def counting(*args, **kwargs):
    traces.append(1)
    return real(*args, **kwargs)

  snn = jaxsnn.convert(apply_fn, variables, x, th)
  jaxsnn.simulate(snn, x, 9)
  new_th = {k: v * 1.5 for k, v in th.items()}
  new_vars = jax.tree_util.tree_map(lambda a: a * 0.9, variables)
  reconverted = jaxsnn.convert(apply_fn, new_vars, x, new_th)
  simulate_module.ir.build_program = counting  # build_program runs exactly when simulate traces
  try:
    cache = simulate_module._simulate._cache_size()
    a = jaxsnn.simulate(snn.replace(thresholds=new_th), x, 9)
    b = jaxsnn.simulate(snn.replace(variables=new_vars), x, 9)
    c = jaxsnn.simulate(reconverted, x + 1.0, 9)
    assert not np.array_equal(a.outputs, b.outputs) and not np.array_equal(b.outputs, c.outputs)
    assert simulate_module._simulate._cache_size() == cache
    assert not traces  # nothing was traced again
    jaxsnn.simulate(snn, x, 10)  # a new number of steps is a new program: compiles (the counter can see it)
    assert traces
  finally:
    simulate_module.ir.build_program = real


# ---- nice errors --------------------------------------------------------------------------------------------------
class Act(nn.Module):
  act: object

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(6)(x))
    x = self.act(nn.Dense(6)(x))
    return nn.Dense(2)(x)


def product(x):
  return x * jnp.roll(x, 1, axis=-1)


def batchnorm_train(x):
  mean = x.mean(0)
  return (x - mean) / jnp.sqrt(((x - mean) ** 2).mean(0) + 1e-5)


@pytest.mark.parametrize("act,primitive", [
    (jnp.tanh, "tanh"), (jax.nn.sigmoid, "logistic"), (functools.partial(jax.nn.gelu, approximate=False), "erfc"),
    (jax.nn.softmax, "exp"), (product, "mul"), (jax.nn.relu6, "min"), (jax.nn.leaky_relu, "ge"),
    (batchnorm_train, "integer_pow"), (lambda x: jnp.maximum(x, 0.5), "max"),
])
def test_unsupported_primitive_is_named_with_its_source_line(act, primitive):
  model = Act(act)
  x = jnp.ones((2, 4))
  variables = model.init(jax.random.PRNGKey(0), x)
  with pytest.raises(jaxsnn.ConversionError) as info:
    jaxsnn.convert(model.apply, variables, x, {})
  msg = str(info.value)
  assert msg.startswith("jaxsnn.convert:") and f"primitive '{primitive}'" in msg
  assert ".py:" in msg and "in module: Act" in msg


def test_multiple_outputs_rejected():
  with pytest.raises(jaxsnn.ConversionError, match="must return one array"):
    jaxsnn.convert(lambda v, x: (x @ v, x @ v), jnp.ones((3, 2)), jnp.ones((4, 3)), {})


def small():
  model = Act(nn.relu)
  x = jnp.ones((3, 4))
  variables = model.init(jax.random.PRNGKey(0), x)
  th = jaxsnn.thresholds(jaxsnn.calibrate(model.apply, variables, [x]))
  return model.apply, variables, x, th


def test_threshold_errors():
  apply_fn, variables, x, th = small()
  names = [k for k in th if k != "output"]
  with pytest.raises(ValueError, match=r"missing: \['Act/relu_1'\]"):
    jaxsnn.convert(apply_fn, variables, x, {names[0]: th[names[0]]})
  with pytest.raises(ValueError, match=r"unexpected: \['bogus'\]"):
    jaxsnn.convert(apply_fn, variables, x, {**th, "bogus": jnp.ones(3)})
  with pytest.raises(ValueError, match=r"has shape \(3,\), but the site has shape \(6,\)"):
    jaxsnn.convert(apply_fn, variables, x, {**th, names[0]: jnp.ones(3)})
  with pytest.raises(ValueError, match="negative or non-finite"):
    jaxsnn.convert(apply_fn, variables, x, {**th, names[0]: -jnp.ones(6)})
  with pytest.raises(ValueError, match="must be floating point"):
    jaxsnn.convert(apply_fn, variables, x, {**th, names[0]: jnp.ones(6, jnp.int32)})
  with pytest.raises(ValueError, match="must be a dict"):
    jaxsnn.convert(apply_fn, variables, x, [th[n] for n in names])
  with pytest.raises(ValueError, match="readout='spike' also needs 'output'"):
    jaxsnn.convert(apply_fn, variables, x, {n: th[n] for n in names}, readout="spike")
  snn = jaxsnn.convert(apply_fn, variables, x, th)
  with pytest.raises(ValueError, match="SpikingNetwork.replace: threshold"):
    snn.replace(thresholds={**th, names[1]: jnp.ones((2, 6))})
  with pytest.raises(ValueError, match="differ in structure, shape or dtype"):
    snn.replace(variables={"params": {}})


def test_argument_errors():
  apply_fn, variables, x, th = small()
  snn = jaxsnn.convert(apply_fn, variables, x, th)
  for steps in (0, -3):
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
      jaxsnn.simulate(snn, x, steps)
  for steps in (2.5, True, None):
    with pytest.raises(ValueError, match="num_steps must be a positive int"):
      jaxsnn.simulate(snn, x, steps)
  with pytest.raises(ValueError, match="block_size must be >= 1"):
    jaxsnn.simulate(snn, x, 4, block_size=0)
  with pytest.raises(ValueError, match=r"per-sample shape \(5,\).*per-sample shape \(4,\)"):
    jaxsnn.simulate(snn, jnp.ones((3, 5)), 4)
  with pytest.raises(ValueError, match="dtype int32"):
    jaxsnn.simulate(snn, jnp.ones((3, 4), jnp.int32), 4)
  with pytest.raises(ValueError, match="leading batch axis"):
    jaxsnn.simulate(snn, jnp.float32(1.0), 4)
  with pytest.raises(ValueError, match="snn must be a SpikingNetwork"):
    jaxsnn.simulate(apply_fn, x, 4)
  with pytest.raises(ValueError, match="readout must be one of"):
    jaxsnn.convert(apply_fn, variables, x, th, readout="rate")
  with pytest.raises(ValueError, match="neuron must be a jaxsnn.neurons.Neuron"):
    jaxsnn.convert(apply_fn, variables, x, th, neuron="SNM")
  with pytest.raises(ValueError, match="batches is empty"):
    jaxsnn.calibrate(apply_fn, variables, [])
  # a different batch size is fine
  assert jaxsnn.simulate(snn, jnp.ones((7, 4)), 3).outputs.shape == (3, 7, 2)


def test_evaluate_streams_batches_and_counts_only_masked_examples():
  apply_fn, variables, x, th = residual_setup()
  snn = jaxsnn.convert(apply_fn, variables, x, th)
  labels = jnp.argmax(apply_fn(variables, x), -1)
  whole = jaxsnn.accuracy_vs_time(jaxsnn.simulate(snn, x, 12), labels)
  padded_x = jnp.concatenate([x[3:], jnp.zeros_like(x[:1])])
  padded_y = jnp.concatenate([labels[3:], jnp.array([-1])])
  batches = [(x[:3], labels[:3]), (padded_x, padded_y, np.array([True, True, False]))]
  res = jaxsnn.evaluate(snn, batches, 12)
  assert res["count"] == 5
  np.testing.assert_array_equal(res["correct"], np.round(np.asarray(whole, np.float64) * 5).astype(np.int64))
  np.testing.assert_array_equal(res["accuracy"], res["correct"] / 5)
  full = jaxsnn.simulate(snn, x, 12)
  assert res["pos_spikes"] == {k: int(v.sum()) for k, v in full.pos_spikes.items()}
  with pytest.raises(ValueError, match="batches is empty"):
    jaxsnn.evaluate(snn, [], 12)


def test_ops_with_constant_operands_convert_and_spiking_ones_do_not():
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
  mask = jnp.asarray(rng.random(6) < 0.5)
  idx = jnp.array([5, 0, 2])

  def good(v, x):
    h = jax.nn.relu(x @ v)
    return jnp.where(mask, h, 0.0)[:, idx] / 2.0 + jnp.flip(h, 1)[:, :3]

  x = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
  th = jaxsnn.thresholds(jaxsnn.calibrate(good, w, [x]))
  trace = jaxsnn.simulate(jaxsnn.convert(good, w, x, th), x, 1024, block_size=100)
  assert rel_error(trace.outputs[-1], good(w, x)) < 2e-2

  def bad(v, x):
    h = jax.nn.relu(x @ v)
    return h[:, :3] / (1.0 + h[:, 3:])

  with pytest.raises(jaxsnn.ConversionError, match="primitive 'div' operand 1 .* is spiking"):
    jaxsnn.convert(bad, w, x, {})


# ---- recorded spike counts and resumable evaluation ---------------------------------------------------------------
@pytest.mark.parametrize("block", [None, 4])
def test_recorded_counts_equal_shorter_runs(block):
  apply_fn, variables, x, th = residual_setup()
  snn = jaxsnn.convert(apply_fn, variables, x, th, initial_potential=0.5)
  weights = np.array([1, 0, 1, 1, 0])
  trace = jaxsnn.simulate(snn, x, 13, block_size=block, record_steps=(3, 7, 13), sample_weights=weights)
  assert trace.recorded["steps"] == (3, 7, 13)
  for k, t in enumerate((3, 7, 13)):
    short = jaxsnn.simulate(snn, x, t)
    for site in snn.site_names:
      want = np.tensordot(weights, np.asarray(short.pos_spikes[site]), axes=1)  # summed over the weighted batch
      np.testing.assert_array_equal(trace.recorded["pos"][site][k], want)
  with pytest.raises(ValueError, match="go beyond num_steps"):
    jaxsnn.simulate(snn, x, 5, record_steps=(8,))


class Interrupted(Exception):
  pass


def test_evaluate_resumes_from_its_checkpoint_to_the_uninterrupted_result(tmp_path):
  apply_fn, variables, x, th = residual_setup()
  snn = jaxsnn.convert(apply_fn, variables, x, th)
  labels = np.asarray(apply_fn(variables, x)).argmax(-1)
  batches = [(x[i:i + 1], labels[i:i + 1]) for i in range(5)]
  whole = jaxsnn.evaluate(snn, batches, 11, record_steps=(4, 11))
  path = tmp_path / "progress.npz"

  def killed_after(n):
    for i, b in enumerate(batches):
      if i == n:
        raise Interrupted
      yield b

  with pytest.raises(Interrupted):
    jaxsnn.evaluate(snn, killed_after(3), 11, record_steps=(4, 11), checkpoint=path, checkpoint_every=2)
  simulated = []

  def watching():
    for b in batches:
      simulated.append(1)
      yield b

  resumed = jaxsnn.evaluate(snn, watching(), 11, record_steps=(4, 11), checkpoint=path, checkpoint_every=2)
  np.testing.assert_array_equal(resumed["correct"], whole["correct"])
  assert resumed["count"] == whole["count"] == 5 and resumed["pos_spikes"] == whole["pos_spikes"]
  for site in snn.site_names:
    np.testing.assert_array_equal(resumed["recorded"]["pos"][site], whole["recorded"]["pos"][site])
  with pytest.raises(ValueError, match="belongs to another job"):
    jaxsnn.evaluate(snn.replace(initial_potential=0.5), batches, 11, record_steps=(4, 11), checkpoint=path)
  counts = jaxsnn.analysis.recorded_counts(whole, 4)
  direct = jaxsnn.analysis.spike_counts(jaxsnn.simulate(snn, x, 4))
  for site in snn.site_names:
    np.testing.assert_array_equal(counts.pos[site], direct.pos[site])
  e1, e2 = jaxsnn.analysis.energy(snn, counts), jaxsnn.analysis.energy(snn, jaxsnn.simulate(snn, x, 4))
  np.testing.assert_allclose(float(e1.ratio), float(e2.ratio), rtol=1e-6)


# ---- folding constant affine chains into the contractions ----------------------------------------------------------
def test_folded_simulation_equals_the_unfolded_one_to_rounding_and_runs_fewer_ops():
  from jaxsnn._src import ir
  apply_fn, variables, x, th = residual_setup()
  plain = ir.build_program(apply_fn, variables, x)
  folded = ir.build_program(apply_fn, variables, x, fold=True)
  per_step = lambda p: sum(1 for o in p.ops if isinstance(o, ir.Op) and p.kinds[o.outs[0]] == ir.SPIKE)  # noqa: E731
  assert per_step(folded) < 0.75 * per_step(plain)  # the conv biases and BatchNorms are gone from the time loop
  a = jaxsnn.simulate(jaxsnn.convert(apply_fn, variables, x, th, fold=False), x, 200)
  b = jaxsnn.simulate(jaxsnn.convert(apply_fn, variables, x, th), x, 200)
  np.testing.assert_allclose(np.asarray(b.outputs), np.asarray(a.outputs), rtol=1e-4, atol=1e-5)
  spikes = sum(int(v.sum()) for v in a.pos_spikes.values())
  differ = sum(int(jnp.abs(a.pos_spikes[k] - b.pos_spikes[k]).sum()) for k in a.pos_spikes)
  assert spikes > 1000 and differ <= spikes * 1e-3


# ---- narrow spike counters ----------------------------------------------------------------------------------------


def two_site_dyadic_net():
  """Two SNM sites with dyadic values (every current exact in float32): some first-site neurons fire every step,
  the second site gets currents of both signs (negative spikes)."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.integers(-8, 9, (4, 5)) / 4, jnp.float32)
  v = {"w1": jnp.asarray(rng.integers(-8, 9, (5, 7)) / 8, jnp.float32),
       "b1": jnp.asarray(rng.integers(0, 9, (7,)) / 4, jnp.float32),
       "w2": jnp.asarray(rng.integers(-8, 9, (7, 6)) / 8, jnp.float32),
       "w3": jnp.asarray(rng.integers(-8, 9, (6, 3)) / 8, jnp.float32)}
  apply_fn = lambda v, x: jax.nn.relu(jax.nn.relu(x @ v["w1"] + v["b1"]) @ v["w2"]) @ v["w3"]  # noqa: E731
  v["w1"] = v["w1"].at[:, 0].set(0.0)
  v["b1"] = v["b1"].at[0].set(2.0)  # with threshold 1/4: neuron 0 fires every step, whatever the input
  th1 = jnp.asarray(rng.integers(1, 9, (7,)) / 4, jnp.float32).at[0].set(0.25)
  th = {"relu": th1, "relu_1": jnp.asarray(rng.integers(1, 5, (6,)) / 4, jnp.float32)}
  return apply_fn, v, x, th


def reference_counts(v, x, th, steps):
  """Both sites stepped one at a time with the neuron's own int32 state (outside the simulator)."""
  neuron = jaxsnn.SNM()
  s1, s2 = neuron.init((x.shape[0], 7)), neuron.init((x.shape[0], 6))
  counts = {k: [np.zeros(n, np.int64), np.zeros(n, np.int64)] for k, n in (("relu", s1.v.shape), ("relu_1", s2.v.shape))}
  current = x @ v["w1"] + v["b1"]
  for _ in range(steps):
    s1, a = neuron.step(th["relu"], s1, current)
    s2, b = neuron.step(th["relu_1"], s2, a @ v["w2"])
    for k, s in (("relu", a), ("relu_1", b)):
      counts[k][0] += np.asarray(s > 0)
      counts[k][1] += np.asarray(s < 0)
  return counts


@pytest.mark.parametrize("steps", [127, 128, 300])
def test_narrow_counters_count_past_their_int8_range_exactly(steps):
  # Up to 127 steps the counters are int8, from 128 int16: a count of T must never wrap, on either schedule.
  apply_fn, v, x, th = two_site_dyadic_net()
  snn = jaxsnn.convert(apply_fn, v, x, th)
  ref = reference_counts(v, x, th, steps)
  assert ref["relu"][0].max() == steps and ref["relu_1"][1].sum() > 0  # fires every step; negative spikes occur
  for block in (None, 16):
    trace = jaxsnn.simulate(snn, x, steps, block_size=block)
    for site, (pos, neg) in ref.items():
      assert trace.pos_spikes[site].dtype == jnp.int32 and trace.neg_spikes[site].dtype == jnp.int32
      np.testing.assert_array_equal(trace.pos_spikes[site], pos, err_msg=f"{site}, block {block}")
      np.testing.assert_array_equal(trace.neg_spikes[site], neg, err_msg=f"{site}, block {block}")


def scan_outvars(fn, *args):
  """The outputs (carry and stacked) of every scan in ``fn``'s jaxpr, nested ones included."""
  out = []

  def visit(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "scan":
        out.extend(eqn.outvars)
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        visit(sub)

  visit(jax.make_jaxpr(fn)(*args).jaxpr)
  return out


def scan_carry_dtypes(fn, *args):
  return {str(o.aval.dtype) for o in scan_outvars(fn, *args)}


def test_counters_are_kept_in_the_narrowest_int_that_holds_num_steps():
  assert [simulate_module.count_dtype(t) for t in (1, 127, 128, 32767, 32768)] == \
      [jnp.int8, jnp.int8, jnp.int16, jnp.int16, jnp.int32]
  apply_fn, v, x, th = two_site_dyadic_net()
  snn = jaxsnn.convert(apply_fn, v, x, th)
  carried = lambda t: scan_carry_dtypes(lambda s, x: jaxsnn.simulate(s, x, t).outputs, snn, x)  # noqa: E731
  assert "int8" in carried(64) and "int16" not in carried(64)
  assert "int16" in carried(200) and "int8" not in carried(200)


def test_spike_tallies_are_carried_in_int32_beside_the_narrow_counters():
  # XLA:CPU accumulates an int8 tally 2.5x slower than an int32 one (benchmarks/tallies.py): the Trace's tallies are
  # int32 in the loop itself, not only when returned, while SNM's own memory stays int8.
  apply_fn, v, x, th = two_site_dyadic_net()
  snn = jaxsnn.convert(apply_fn, v, x, th)
  shapes = {(str(o.aval.dtype), o.aval.shape) for o in scan_outvars(lambda s, x: jaxsnn.simulate(s, x, 64), snn, x)}
  for site, count in jaxsnn.simulate(snn, x, 64).pos_spikes.items():
    assert ("int32", count.shape) in shapes and ("int8", count.shape) in shapes, site


def test_a_neuron_that_changes_its_counters_dtype_is_named():
  def step(threshold, state, current):  # widens its memory back to int32
    state, s = jaxsnn.SNM().step(threshold, state, current)
    return state._replace(m=state.m.astype(jnp.int32)), s

  neuron = jaxsnn.Neuron(init=jaxsnn.SNM().init, step=step, name="wide", counters=("m",))
  apply_fn, v, x, th = two_site_dyadic_net()
  snn = jaxsnn.convert(apply_fn, v, x, th, neuron=neuron)
  with pytest.raises(ValueError, match=r"neuron 'wide' declares \['m'\] as counters, so they are kept in int8"):
    jaxsnn.simulate(snn, x, 8)


# ---- small convolutions as im2col + matmul (CPU) ------------------------------------------------------------------


class TinyMapNet(nn.Module):
  """VGG16's last stage in miniature: 3x3 convolutions on 2x2 maps (and one with stride 2 from 4x4)."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(6, (3, 3))(x))                    # 4x4: constant input current, run once
    x = nn.relu(nn.Conv(8, (3, 3), strides=(2, 2))(x))    # 4x4 -> 2x2 on spikes: lowered
    x = nn.relu(nn.Conv(8, (3, 3), kernel_dilation=(2, 2), padding=((2, 2), (2, 2)))(x))  # 2x2, dilated: lowered
    x = nn.relu(nn.Conv(8, (3, 3))(x) + x)                 # 2x2 with a residual: lowered
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


def tiny_map_setup():
  """Dyadic inputs, weights and thresholds: every sum is exact in float32 whatever the order of summation."""
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.integers(-8, 9, (6, 4, 4, 3)) / 4, jnp.float32)
  model = TinyMapNet()
  variables = model.init(jax.random.PRNGKey(0), x)
  variables = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.integers(-4, 5, a.shape) / 16, a.dtype), variables)
  stats = jaxsnn.calibrate(model.apply, variables, [x])
  th = {k: jnp.maximum(2.0 ** jnp.round(jnp.log2(jnp.maximum(v, 1e-3))), 0.25)  # powers of two: dyadic
        for k, v in jaxsnn.thresholds(stats).items()}
  return model.apply, variables, x, th


def spiking_convolutions(snn, x, steps=8, **kw):
  """Convolution primitives run inside the time loop (per step), by the traced program of ``simulate``."""
  names = []

  def visit(jaxpr, inside):
    for eqn in jaxpr.eqns:
      if inside and eqn.primitive.name == "conv_general_dilated":
        names.append(eqn.primitive.name)
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        visit(sub, inside or eqn.primitive.name in ("scan", "while"))

  visit(jax.make_jaxpr(lambda s, x: jaxsnn.simulate(s, x, steps, **kw).outputs)(snn, x).jaxpr, False)
  return len(names)


def test_small_convolutions_run_as_matmuls_and_give_the_same_spikes(monkeypatch):
  from jaxsnn._src import lowering
  apply_fn, variables, x, th = tiny_map_setup()
  snn = jaxsnn.convert(apply_fn, variables, x, th)
  assert jax.default_backend() == "cpu"
  assert spiking_convolutions(snn, x) == 0  # all three spiking convolutions have 2x2 outputs
  lowered = jaxsnn.simulate(snn, x, 40)
  assert sum(int(c.sum()) for c in lowered.pos_spikes.values()) > 0
  for block in (4, 40):  # the layer-major schedule lowers them the same way: still bit-identical
    got = jaxsnn.simulate(snn, x, 40, block_size=block)
    np.testing.assert_array_equal(np.asarray(got.outputs), np.asarray(lowered.outputs))
  monkeypatch.setattr(lowering, "SMALL_CONV_POSITIONS", 0)  # XLA's convolution kernel everywhere
  jax.clear_caches()
  try:
    assert spiking_convolutions(snn, x) == 3
    plain = jaxsnn.simulate(snn, x, 40)
  finally:
    jax.clear_caches()
  np.testing.assert_array_equal(np.asarray(lowered.outputs), np.asarray(plain.outputs))  # dyadic: exact
  for site in plain.pos_spikes:
    np.testing.assert_array_equal(lowered.pos_spikes[site], plain.pos_spikes[site], err_msg=site)
    np.testing.assert_array_equal(lowered.neg_spikes[site], plain.neg_spikes[site], err_msg=site)


@pytest.mark.parametrize("spatial,strides,padding,dilation", [
    (2, (1, 1), ((1, 1), (1, 1)), (1, 1)), (4, (2, 2), ((1, 1), (1, 1)), (1, 1)),
    (4, (1, 1), ((0, 0), (0, 0)), (1, 1)), (3, (1, 2), ((2, 1), (0, 1)), (2, 1))])
def test_conv_as_matmul_equals_the_convolution_on_dyadic_data(spatial, strides, padding, dilation):
  from jaxsnn._src import lowering
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.integers(-8, 9, (3, spatial, spatial, 5)) / 4, jnp.float32)
  k = jnp.asarray(rng.integers(-8, 9, (3, 3, 5, 4)) / 8, jnp.float32)
  conv = lambda x, k: jax.lax.conv_general_dilated(x, k, strides, padding, rhs_dilation=dilation,  # noqa: E731
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  params = jax.make_jaxpr(conv)(x, k).jaxpr.eqns[0].params
  np.testing.assert_array_equal(lowering.conv_as_matmul(x, k, params), conv(x, k))
