"""Simulation: convergence to the ANN on random architectures, the exact schedules, streamed and resumable evaluation,
recorded counts, folding, narrow counters, small-convolution lowering, bfloat16 networks, initial potentials,
offsets and the readout delay."""


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsnn
from jaxsnn._src import simulate as simulate_module
from conftest import (count_compiles, dyadic_two_layer, Killed, killed_after, numpy_neuron_run, random_net, rel_error,
                      residual_setup)

STEPS = (64, 128, 256, 512, 1024)


# ---- convergence on random architectures ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(12))
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
  with pytest.raises(ValueError, match="labels of shape .3,. do not match the batch of 8 examples"):
    jaxsnn.accuracy_vs_time(trace, labels[:3])
  classes = trace.outputs.shape[-1]
  # Labels outside [0, classes): an error naming the values and their count, never an accuracy of 0.
  with pytest.raises(ValueError, match=rf"jaxsnn.accuracy_vs_time: 8 of 8 labels .* outside \[0, {classes}\)"):
    jaxsnn.accuracy_vs_time(trace, np.asarray(labels) + classes)
  negative = np.asarray(labels).copy()
  negative[0] = -1
  with pytest.raises(ValueError, match=r"1 of 8 labels .* outside .*: -1\."):
    jaxsnn.accuracy_vs_time(trace, negative)
  with pytest.raises(ValueError, match="labels must be integer class indices"):
    jaxsnn.accuracy_vs_time(trace, np.asarray(labels, np.float32))


# ---- the two schedules are bit-identical ----------------------------------------------------------------------------
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


class PooledHead(nn.Module):
  """Sums right before the readout: an average pool into the output layer, or a global mean (no neuron after them
  to hide a rounding difference in the readout)."""
  mean: bool = False

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    x = x.mean(axis=(1, 2)) if self.mean else nn.avg_pool(x, (2, 2), (2, 2)).reshape(x.shape[0], -1)
    return nn.Dense(3)(x)


@pytest.mark.parametrize("mean", [False, True])
@pytest.mark.parametrize("readout", ["membrane", "spike"])
def test_schedules_stay_bit_identical_with_sums_before_the_readout(mean, readout):
  model = PooledHead(mean)
  x = jax.random.normal(jax.random.key(0), (12, 6, 6, 1))
  variables = model.init(jax.random.key(1), x)
  snn = jaxsnn.convert(model.apply, variables, x, jaxsnn.thresholds(jaxsnn.calibrate(model.apply, variables, [x])),
                       readout=readout)
  ref = jaxsnn.simulate(snn, x, 16)
  for block in (3, 8):
    np.testing.assert_array_equal(jaxsnn.simulate(snn, x, 16, block_size=block).outputs, ref.outputs)


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
    # A new number of steps is a new program: it compiles, and the counter sees it. (29: a T that no other test
    # simulates this network with; with 10, a test that ran before left that program in the cache.)
    jaxsnn.simulate(snn, x, 29)
    assert traces
  finally:
    simulate_module.ir.build_program = real


# ---- nice errors --------------------------------------------------------------------------------------------------


def test_evaluate_streams_batches_and_counts_only_masked_examples():
  apply_fn, variables, x, th = residual_setup()
  snn = jaxsnn.convert(apply_fn, variables, x, th)
  labels = jnp.argmax(apply_fn(variables, x), -1)
  whole = jaxsnn.accuracy_vs_time(jaxsnn.simulate(snn, x, 12), labels)
  padded_x = jnp.concatenate([x[3:], jnp.zeros_like(x[:1])])
  padded_y = jnp.concatenate([labels[3:], jnp.array([-1])])
  batches = [(x[:3], labels[:3]), (padded_x, padded_y, np.array([True, True, False]))]
  res = jaxsnn.evaluate(snn, batches, 12, tallies=True)
  assert isinstance(res, jaxsnn.Evaluation) and res.count == 5 and res.num_steps == 12
  np.testing.assert_array_equal(res.correct, np.round(np.asarray(whole, np.float64) * 5).astype(np.int64))
  np.testing.assert_array_equal(res.accuracy, res.correct / 5)
  full = jaxsnn.simulate(snn, x, 12)
  assert res.pos_spikes == {k: int(v.sum()) for k, v in full.pos_spikes.items()}
  assert list(res.pos_spikes) == list(snn.site_names)  # network order
  # Accuracy alone carries no tallies, and gives the same accuracies.
  plain = jaxsnn.evaluate(snn, batches, 12)
  assert plain.pos_spikes is None and plain.neg_spikes is None
  np.testing.assert_array_equal(plain.correct, res.correct)
  with pytest.raises(ValueError, match="batches is empty"):
    jaxsnn.evaluate(snn, [], 12)


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


def test_evaluate_resumes_from_its_checkpoint_to_the_uninterrupted_result(tmp_path):
  apply_fn, variables, x, th = residual_setup()
  snn = jaxsnn.convert(apply_fn, variables, x, th)
  labels = np.asarray(apply_fn(variables, x)).argmax(-1)
  batches = [(x[i:i + 1], labels[i:i + 1]) for i in range(5)]
  whole = jaxsnn.evaluate(snn, batches, 11, record_steps=(4, 11), tallies=True)
  path = tmp_path / "progress.npz"

  with pytest.raises(Killed):
    jaxsnn.evaluate(snn, killed_after(batches, 3), 11, record_steps=(4, 11), checkpoint=path, checkpoint_every=2,
                    tallies=True)
  simulated = []

  def watching():
    for b in batches:
      simulated.append(1)
      yield b

  resumed = jaxsnn.evaluate(snn, watching(), 11, record_steps=(4, 11), checkpoint=path, checkpoint_every=2,
                            tallies=True)
  assert len(simulated) == 5  # every batch was read again (to keep the order), but only the last 3 simulated
  np.testing.assert_array_equal(resumed.correct, whole.correct)
  assert resumed.count == whole.count == 5 and resumed.pos_spikes == whole.pos_spikes
  for site in snn.site_names:
    np.testing.assert_array_equal(resumed.recorded.pos[site], whole.recorded.pos[site])
  with pytest.raises(ValueError, match="belongs to another job"):
    jaxsnn.evaluate(snn.replace(initial_potential=0.5), batches, 11, record_steps=(4, 11), checkpoint=path,
                    tallies=True)
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
  def step(threshold, state, current, fire):  # widens its memory back to int32
    state, s = jaxsnn.SNM().step(threshold, state, current, fire)
    return state._replace(m=state.m.astype(jnp.int32)), s

  neuron = jaxsnn.Neuron(init=jaxsnn.SNM().init, step=step, name="wide", counters=("m",))
  apply_fn, v, x, th = two_site_dyadic_net()
  snn = jaxsnn.convert(apply_fn, v, x, th, neuron=neuron)
  with pytest.raises(ValueError, match=r"neuron 'wide' declares \['m'\] as counters, so they are kept in int8"):
    jaxsnn.simulate(snn, x, 8)
  # A step without the firing decision's hook is named, with what to write instead.
  old = jaxsnn.Neuron(init=jaxsnn.SNM().init, step=lambda th, st, z: jaxsnn.SNM().step(th, st, z), name="old")
  with pytest.raises(ValueError, match=r"neuron 'old': its step must take \(threshold, state, current, fire\)"):
    jaxsnn.simulate(jaxsnn.convert(apply_fn, v, x, th, neuron=old), x, 8)


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


def test_bfloat16_network_keeps_float32_state_converges_and_matches_float32_spikes():
  apply_fn, variables, x = random_net(4)
  bf16 = lambda v, x: apply_fn(jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), v), x)  # noqa: E731
  xb = x.astype(jnp.bfloat16)
  th = jaxsnn.thresholds(jaxsnn.calibrate(bf16, variables, [xb]))
  snn = jaxsnn.convert(bf16, variables, xb, th)
  ann = np.asarray(bf16(variables, xb), np.float32)
  trace = jaxsnn.simulate(snn, xb, 512, block_size=128)
  errors = [rel_error(trace.outputs[t - 1], ann) for t in (32, 128, 512)]
  assert errors[0] > errors[1] > errors[2] and errors[2] < 0.05, errors
  # With bfloat16 state the membrane stops absorbing small currents; float32 state is the default, and asking for
  # bfloat16 state shows the difference.
  narrow = jaxsnn.convert(bf16, variables, xb, th, state_dtype=jnp.bfloat16)
  assert rel_error(jaxsnn.simulate(narrow, xb, 512, block_size=128).outputs[-1], ann) > errors[2]

  # Currents exact in bfloat16 (dyadic, few bits): the same spikes as the float32 network.
  rng = np.random.default_rng(0)
  w1 = jnp.asarray(rng.integers(-8, 9, (6, 8)) / 8, jnp.float32)
  w2 = jnp.asarray(rng.integers(-8, 9, (8, 3)) / 8, jnp.float32)
  xd = jnp.asarray(rng.integers(-4, 5, (16, 6)) / 4, jnp.float32)
  f = lambda v, x: jax.nn.relu(x @ v[0]) @ v[1]  # noqa: E731
  th32 = {"relu": jnp.asarray(rng.integers(1, 9, (8,)) / 4, jnp.float32)}
  s32 = jaxsnn.simulate(jaxsnn.convert(f, (w1, w2), xd, th32), xd, 40)
  vb = (w1.astype(jnp.bfloat16), w2.astype(jnp.bfloat16))
  s16 = jaxsnn.simulate(jaxsnn.convert(f, vb, xd.astype(jnp.bfloat16), th32), xd.astype(jnp.bfloat16), 40)
  np.testing.assert_array_equal(s16.pos_spikes["relu"], s32.pos_spikes["relu"])
  np.testing.assert_array_equal(s16.neg_spikes["relu"], s32.neg_spikes["relu"])


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


@pytest.mark.parametrize("neuron,readout", [(jaxsnn.SNM(), "membrane"), (jaxsnn.SNM(), "spike"),
                                            (jaxsnn.IF(), "spike")])
def test_schedules_stay_bit_identical_with_potentials_and_offsets(neuron, readout):
  apply_fn, variables, x, th = residual_setup()
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
  apply_fn, variables, x, th = residual_setup()
  snn = jaxsnn.convert(apply_fn, variables, x, th)
  jaxsnn.simulate(snn, x, 6)
  others = [snn.replace(initial_potential=0.5), snn.replace(offsets={snn.site_names[0]: 0.1}),
            snn.replace(thresholds={k: v * 0.8 for k, v in th.items()}, initial_potential=0.25)]
  with count_compiles() as compiles:
    outs = [jaxsnn.simulate(o, x, 6).outputs for o in others]
  assert compiles == []
  assert not np.array_equal(outs[0], outs[1])


def test_bad_potentials_are_rejected_with_the_site_named():
  apply_fn, variables, x, th = residual_setup()
  with pytest.raises(ValueError, match="initial_potential must be finite"):
    jaxsnn.convert(apply_fn, variables, x, th, initial_potential=float("nan"))
  with pytest.raises(ValueError, match="initial_potential .* has shape \\(2,\\)"):
    jaxsnn.convert(apply_fn, variables, x, th, initial_potential={"ResidualConvNet/relu": np.zeros(2)})
  with pytest.raises(ValueError, match="initial_potential must be a float or a dict"):
    jaxsnn.convert(apply_fn, variables, x, th, initial_potential="half")


def test_non_finite_inputs_read_out_nan_and_count_as_wrong():
  apply_fn, variables, x, th = residual_setup()
  snn = jaxsnn.convert(apply_fn, variables, x, th)
  bad = x.at[1, 2, 3, 0].set(jnp.nan).at[3, 0, 0, 1].set(jnp.inf)
  trace = jaxsnn.simulate(snn, bad, 9, block_size=4)
  out = np.asarray(trace.outputs)
  assert np.isnan(out[:, [1, 3]]).all() and np.isfinite(out[:, [0, 2, 4]]).all()
  np.testing.assert_array_equal(out[:, [0, 2, 4]], np.asarray(jaxsnn.simulate(snn, x, 9).outputs)[:, [0, 2, 4]])
  labels = np.asarray(apply_fn(variables, x)).argmax(-1)
  with pytest.warns(UserWarning, match="2 of 5 examples had a NaN or infinite input"):
    res = jaxsnn.evaluate(snn, [(bad, labels)], 9)
  assert res.non_finite == 2 and res.correct.max() <= 3
  # accuracy_vs_time never scores a non-finite sample as class 0 (an all-NaN batch scores 0, not label 0's share).
  zeros = np.zeros_like(labels)
  nan_trace = jaxsnn.simulate(snn, jnp.full_like(x, jnp.nan), 4)
  np.testing.assert_array_equal(jaxsnn.accuracy_vs_time(nan_trace, zeros), np.zeros(4))


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
  apply_fn, variables, x, th = residual_setup()
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
  apply_fn, variables, x, th = residual_setup()
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


@pytest.mark.parametrize("spatial,kernel,stride,padding,dilation", [
    (8, 3, 1, "SAME", 1), (9, 3, 2, ((1, 1), (1, 1)), 1), (8, 1, 2, "VALID", 1), (10, 3, 1, ((2, 0), (0, 1)), 2),
    (7, 3, 2, "SAME", 1), (6, 2, 2, "VALID", 1)])
def test_the_simulators_convolution_has_jaxs_gradients(spatial, kernel, stride, padding, dilation):
  """The simulator's convolution (the same forward op) computes its input gradient as a convolution with the kernel
  in HWIO and its weight gradient as im2col + matmul, which XLA:CPU runs far faster inside the time loop."""
  from jaxsnn._src import lowering
  rng = np.random.default_rng(spatial + kernel)
  x = jnp.asarray(rng.normal(size=(2, spatial, spatial, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 3, 4)), jnp.float32)
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (stride, stride), padding, rhs_dilation=(dilation,) * 2,  # noqa: E731
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  params = jax.make_jaxpr(conv)(x, w).jaxpr.eqns[0].params
  y, vjp = jax.vjp(conv, x, w)
  y2, vjp2 = jax.vjp(lambda x, w: lowering.conv_with_matmul_grad(x, w, params), x, w)
  np.testing.assert_array_equal(y2, y)
  g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  (dx, dw), (dx2, dw2) = vjp(g), vjp2(g)
  np.testing.assert_allclose(dx2, dx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw2, dw, rtol=1e-5, atol=1e-5)
