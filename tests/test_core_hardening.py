"""The core's foundations: one primitive registry, input-only work kept analog, value-equal configuration (no
recompilation), the frozen SpikingNetwork pytree, clear errors, masked calibration and module boundaries."""

import ast
import contextlib
import dataclasses
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jcore

import jaxsnn
from jaxsnn._src import rules

ROOT = pathlib.Path(__file__).resolve().parents[1]


def rel_error(out, ann):
  return float(jnp.abs(out - ann).max() / jnp.abs(ann).max())


def converges(apply_fn, variables, x, steps=1024, tol=2e-2):
  th = jaxsnn.thresholds(jaxsnn.calibrate(apply_fn, variables, [x]))
  snn = jaxsnn.convert(apply_fn, variables, x, th)
  trace = jaxsnn.simulate(snn, x, steps, block_size=128)
  err = rel_error(trace.outputs[-1], apply_fn(variables, x))
  assert err < tol, err
  return snn


@contextlib.contextmanager
def count_compiles():
  """Counts XLA compilations (jax.monitoring's backend compile events) inside the block."""
  events = []

  def listener(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      events.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield events
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def dense_params(seed, sizes):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(0, 1 / np.sqrt(a), (a, b)), jnp.float32) for a, b in zip(sizes[:-1], sizes[1:])]


X = jnp.asarray(np.random.default_rng(7).normal(size=(16, 6)), jnp.float32)


# ---- 1. the registry: linear primitives real models emit ----------------------------------------------------------
def test_split_stop_gradient_scatter_add_and_constant_cond_convert_and_converge():
  w1, w2, w3 = dense_params(0, [6, 8, 8, 3])
  idx = jnp.array([1, 4, 6])

  def net(v, x):
    h = jax.nn.relu(x @ v[0])
    a, b = jnp.split(h, 2, axis=1)  # split
    h = jnp.concatenate([a + jax.lax.stop_gradient(b), b], axis=1)  # stop_gradient
    h = h.at[:, idx].add(a[:, :3])  # scatter-add with constant indices
    flag = jnp.asarray(3) > 2  # a predicate known when the network is traced
    h = jax.lax.cond(flag, lambda y: y * 0.5, lambda y: jnp.tanh(y), h)  # the tanh branch is never taken
    h = jax.nn.relu(h @ v[1])
    return h @ v[2]

  snn = converges(net, (w1, w2, w3), X)
  assert len(snn.site_names) == 2


class ScanBlock(nn.Module):
  @nn.compact
  def __call__(self, c, _):
    return nn.relu(nn.Dense(8)(c)), None


class ScanNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(8)(x))
    x, _ = nn.scan(ScanBlock, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)()(x, None)
    return nn.Dense(3)(x)


def test_nn_scan_is_unrolled_into_one_site_per_layer():
  model = ScanNet()
  variables = model.init(jax.random.key(0), X)
  snn = converges(model.apply, variables, X)
  assert len(snn.site_names) == 4 and len(set(snn.site_names)) == 4


def test_while_and_data_dependent_cond_on_spikes_are_named():
  w1, w2 = dense_params(1, [6, 8, 3])

  def with_while(v, x):
    h = jax.nn.relu(x @ v[0])
    h, _ = jax.lax.while_loop(lambda c: c[1] < 3, lambda c: (c[0] * 0.5, c[1] + 1), (h, 0))
    return h @ v[1]

  with pytest.raises(jaxsnn.ConversionError, match=r"primitive 'while'(.|\n)*hint: a while loop"):
    jaxsnn.convert(with_while, (w1, w2), X, {})

  def with_cond(v, x):
    h = jax.nn.relu(x @ v[0])
    h = jax.lax.cond(v[1][0, 0] > 0, lambda y: y * 2.0, lambda y: y, h)  # the predicate is a variable
    return h @ v[1]

  with pytest.raises(jaxsnn.ConversionError, match=r"primitive 'cond'(.|\n)*hint: lax.cond"):
    jaxsnn.convert(with_cond, (w1, w2), X, {})


def test_a_new_linear_primitive_is_one_registry_entry():
  double_p = jcore.Primitive("test_double")
  double_p.def_impl(lambda x: 2 * x)
  double_p.def_abstract_eval(lambda x: jax.core.ShapedArray(x.shape, x.dtype))
  jax.interpreters.mlir.register_lowering(
      double_p, jax.interpreters.mlir.lower_fun(lambda x: 2 * x, multiple_results=False))
  jax.interpreters.batching.primitive_batchers[double_p] = lambda args, dims: (double_p.bind(*args), dims[0])
  w1, w2 = dense_params(2, [6, 8, 3])
  net = lambda v, x: double_p.bind(jax.nn.relu(x @ v[0])) @ v[1]  # noqa: E731
  with pytest.raises(jaxsnn.ConversionError, match="primitive 'test_double' is not affine"):
    jaxsnn.convert(net, (w1, w2), X, {})
  rules.register(double_p, rules.Rule(rules.LINEAR))
  try:
    converges(net, (w1, w2), X)
  finally:
    del rules.RULES[double_p]


# ---- 2. input-only work stays analog ------------------------------------------------------------------------------
class NormalisedInput(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.LayerNorm()(jnp.clip(x, -1.5, 1.5))  # max(var, 0) and the clip's max act on the input alone
    x = nn.relu(nn.Dense(8)(x))
    h = nn.Dense(8)(x)
    x = jnp.where(h > 0, h, 0.0)  # a ReLU written as a select
    return nn.Dense(3)(x)


def test_layer_norm_and_clip_on_the_input_are_computed_once_and_where_is_a_relu():
  model = NormalisedInput()
  variables = model.init(jax.random.key(1), X)
  snn = converges(model.apply, variables, X)
  assert snn.site_names == ("NormalisedInput/relu", "NormalisedInput/relu_1")


def test_relu_on_the_input_feeding_a_weighted_layer_is_still_a_neuron():
  w1, w2 = dense_params(3, [6, 8, 3])
  snn = converges(lambda v, x: jax.nn.relu(x @ v[0]) @ v[1], (w1, w2), X)
  assert len(snn.site_names) == 1


def test_layer_norm_between_spiking_layers_is_an_error():
  class Mid(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Dense(8)(nn.relu(nn.Dense(8)(x))))
      x = nn.relu(nn.Dense(8)(nn.LayerNorm()(x)))  # on spikes of the second layer
      return nn.Dense(3)(x)

  model = Mid()
  variables = model.init(jax.random.key(0), X)
  with pytest.raises(jaxsnn.ConversionError, match="primitive 'square'"):
    jaxsnn.convert(model.apply, variables, X, {})


def test_a_network_without_activations_is_an_error():
  (w,) = dense_params(4, [6, 3])
  with pytest.raises(jaxsnn.ConversionError, match="nothing to convert"):
    jaxsnn.convert(lambda v, x: x @ v, w, X, {})


# ---- 3. no recompilation traps -----------------------------------------------------------------------------------
def test_neurons_are_value_equal():
  assert jaxsnn.IF() is jaxsnn.IF("subtract") is jaxsnn.IF(reset="subtract")
  assert jaxsnn.SNM() is jaxsnn.SNM() and jaxsnn.SignedIF() is jaxsnn.SignedIF()
  assert jaxsnn.IF("zero") is not jaxsnn.IF()


class Tiny(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Dense(8)(x)))
    return nn.Dense(3)(x)


def test_an_equal_apply_fn_calibrates_converts_and_simulates_without_compiling_again():
  model = Tiny()
  variables = model.init(jax.random.key(0), X)
  batches = [X[:8], X[8:]]
  stats = jaxsnn.calibrate(lambda v, x: model.apply(v, x, train=False), variables, batches)
  th = jaxsnn.thresholds(stats)
  snn = jaxsnn.convert(lambda v, x: model.apply(v, x, train=False), variables, X, th, neuron=jaxsnn.IF())
  first = jaxsnn.simulate(snn, X, 8)
  jaxsnn.authors_thresholds(lambda v, x: model.apply(v, x, train=False), variables, batches)
  jaxsnn.analysis.site_activations(lambda v, x: model.apply(v, x, train=False), variables, X)
  # A notebook cell run again: fresh lambdas, fresh neuron factory calls, equal values.
  snn2 = jaxsnn.convert(lambda v, x: model.apply(v, x, train=False), variables, X, th, neuron=jaxsnn.IF("subtract"))
  half = {k: jnp.full(s, 0.5) for k, s in snn.site_shapes}
  new_data = [snn.replace(thresholds={k: v * 1.25 for k, v in th.items()}),
              snn.replace(initial_potential=half, offsets=half)]
  with count_compiles() as compiles:
    jaxsnn.calibrate(lambda v, x: model.apply(v, x, train=False), variables, batches)
    second = jaxsnn.simulate(snn2, X, 8)
    for other in new_data:
      jaxsnn.simulate(other, X, 8)
    jaxsnn.authors_thresholds(lambda v, x: model.apply(v, x, train=False), variables, batches)
    jaxsnn.analysis.site_activations(lambda v, x: model.apply(v, x, train=False), variables, X)
  assert compiles == []
  np.testing.assert_array_equal(first.outputs, second.outputs)
  with count_compiles() as compiles:  # the counter sees a genuinely new program
    jaxsnn.simulate(snn, X, 9)
  assert compiles


def test_a_different_closed_over_constant_is_a_different_program():
  (w1, w2) = dense_params(5, [6, 8, 3])
  th = {"relu": jnp.full((8,), 1.0)}
  a = jaxsnn.convert(lambda v, x: jax.nn.relu(x @ w1) @ v, w2, X, th)
  b = jaxsnn.convert(lambda v, x: jax.nn.relu(x @ (w1 * 2)) @ v, w2, X, th)
  assert a.traced != b.traced
  assert not np.array_equal(jaxsnn.simulate(a, X, 16).outputs, jaxsnn.simulate(b, X, 16).outputs)


# ---- 4. the frozen SpikingNetwork pytree -------------------------------------------------------------------------
def test_spiking_network_is_a_frozen_validated_pytree():
  model = Tiny()
  variables = model.init(jax.random.key(0), X)
  th = jaxsnn.thresholds(jaxsnn.calibrate(model.apply, variables, [X]))
  snn = jaxsnn.convert(model.apply, variables, X, th)
  with pytest.raises(dataclasses.FrozenInstanceError):
    snn.thresholds = {}
  leaves, treedef = jax.tree_util.tree_flatten(snn)
  again = jax.tree_util.tree_unflatten(treedef, leaves)
  assert jax.tree_util.tree_structure(again) == treedef and again.site_shapes == snn.site_shapes
  with pytest.raises(ValueError, match="cannot replace \\['neuron'\\]"):
    snn.replace(neuron=jaxsnn.IF())
  with pytest.raises(ValueError, match="initial_potential 'Tiny/relu' has 1 non-finite"):
    snn.replace(initial_potential={"Tiny/relu": jnp.full((8,), 0.5).at[3].set(jnp.nan)})
  with pytest.raises(ValueError, match="offsets 'Tiny/relu' has shape \\(3,\\)"):
    snn.replace(offsets={"Tiny/relu": jnp.zeros(3)})
  with pytest.raises(ValueError, match="unexpected: \\['nope'\\]"):
    snn.replace(offsets={"nope": jnp.zeros(3)})


# ---- 5. clear errors where users land ------------------------------------------------------------------------------
def test_calibrate_rejects_one_array_with_a_message_that_says_what_to_pass():
  model = Tiny()
  variables = model.init(jax.random.key(0), X)
  with pytest.raises(ValueError, match=r"iterable of input batches(.|\n)*Pass \[x\] for one batch"):
    jaxsnn.calibrate(model.apply, variables, X)
  with pytest.raises(ValueError, match="iterable of input batches"):
    jaxsnn.calibrate(model.apply, variables, np.asarray(X))


def test_float32_thresholds_on_a_bfloat16_network_are_cast_at_convert():
  model = Tiny()
  variables = model.init(jax.random.key(0), X)
  apply_fn = lambda v, x: model.apply(jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), v), x)  # noqa: E731
  xb = X.astype(jnp.bfloat16)
  th = jaxsnn.thresholds(jaxsnn.calibrate(model.apply, variables, [X]))  # float32
  snn = jaxsnn.convert(apply_fn, variables, xb, th)
  assert all(v.dtype == jnp.bfloat16 for v in snn.thresholds.values())
  assert snn.state_dtype == jnp.float32
  trace = jaxsnn.simulate(snn, xb, 64)
  assert trace.outputs.dtype == jnp.float32 and np.isfinite(np.asarray(trace.outputs)).all()


def test_a_site_without_a_leading_batch_axis_is_named():
  w1, w2 = dense_params(6, [6, 8, 3])

  def pooled(v, x):  # a ReLU of a batch statistic: its leading axis is not the batch
    h = jax.nn.relu(x.mean(0) @ v[0])
    return jnp.broadcast_to(h @ v[1], (x.shape[0], 3))

  with pytest.raises(jaxsnn.ConversionError, match="leading axis is not the batch axis"):
    jaxsnn.convert(pooled, (w1, w2), X, {})


# ---- 6. calibration never sees padding ---------------------------------------------------------------------------
def test_masked_rows_never_enter_the_statistics():
  model = Tiny()
  variables = model.init(jax.random.key(0), X)
  padded = jnp.concatenate([X[8:], 100 * jnp.ones((4, 6))])  # padding that would dominate every max
  mask = np.array([True] * 8 + [False] * 4)
  got = jaxsnn.calibrate(model.apply, variables, [X[:8], (padded, mask)], histogram=True)
  want = jaxsnn.calibrate(model.apply, variables, [X[:8], X[8:]], histogram=True)
  assert got.num_samples == want.num_samples == 16
  for k in want.max:
    np.testing.assert_array_equal(got.max[k], want.max[k])
  for k in want.hist:
    np.testing.assert_array_equal(got.hist[k], want.hist[k])
  with pytest.raises(ValueError, match="every example of the calibration batches is masked out"):
    jaxsnn.calibrate(model.apply, variables, [(X, np.zeros(16, bool))])


def test_non_finite_activations_are_named_at_calibration():
  model = Tiny()
  variables = model.init(jax.random.key(0), X)
  with pytest.raises(ValueError, match=r"non-finite activations(.|\n)*site 'Tiny/relu': 8 values"):
    jaxsnn.calibrate(model.apply, variables, [X[:4], X[4:8].at[1, 2].set(jnp.nan)])


# ---- 7. module boundaries ----------------------------------------------------------------------------------------
def test_no_module_imports_another_modules_private_names_or_jax_internals():
  offenders = []
  for path in sorted((ROOT / "jaxsnn").rglob("*.py")):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module:
        if node.module.startswith("jax._src"):
          offenders.append(f"{path.name}: from {node.module}")
        if node.module.startswith("jaxsnn"):
          offenders += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
      if isinstance(node, ast.Import):
        offenders += [f"{path.name}: import {a.name}" for a in node.names if a.name.startswith("jax._src")]
  assert offenders == []


def test_experiment_scripts_do_not_import_each_other():
  scripts = {p.stem for p in (ROOT / "experiments").glob("*.py")} - {"__init__", "common"}
  for path in (ROOT / "experiments").glob("*.py"):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
      names = []
      if isinstance(node, ast.ImportFrom) and node.module:
        names = [node.module.split(".")[-1]] + [a.name for a in node.names]
      elif isinstance(node, ast.Import):
        names = [a.name.split(".")[-1] for a in node.names]
      assert not set(names) & scripts, (path.name, names)


# ---- bfloat16 networks keep float32 neuron state ----------------------------------------------------------------
def test_bfloat16_network_keeps_float32_state_converges_and_matches_float32_spikes():
  from random_nets import random_net
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
