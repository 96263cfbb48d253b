"""Conversion: what converts (one primitive registry, input-only work kept analog, scans and constant conds inlined),
what does not (each named with its primitive, source line and module), value-equal configuration (no recompilation),
and the frozen SpikingNetwork pytree."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jcore

import jaxsnn
from jaxsnn._src import rules
from conftest import count_compiles, rel_error


def converges(apply_fn, variables, x, steps=1024, tol=2e-2):
  th = jaxsnn.thresholds(jaxsnn.calibrate(apply_fn, variables, [x]))
  snn = jaxsnn.convert(apply_fn, variables, x, th)
  trace = jaxsnn.simulate(snn, x, steps, block_size=128)
  err = rel_error(trace.outputs[-1], apply_fn(variables, x))
  assert err < tol, err
  return snn


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


class TinyBN(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Dense(8)(x)))
    return nn.Dense(3)(x)


def test_an_equal_apply_fn_calibrates_converts_and_simulates_without_compiling_again():
  model = TinyBN()
  variables = model.init(jax.random.key(0), X)
  batches = [X[:8], X[8:]]
  stats = jaxsnn.calibrate(lambda v, x: model.apply(v, x, train=False), variables, batches)
  th = jaxsnn.thresholds(stats)
  snn = jaxsnn.convert(lambda v, x: model.apply(v, x, train=False), variables, X, th, neuron=jaxsnn.IF())
  first = jaxsnn.simulate(snn, X, 8)
  jaxsnn.authors_protocol.thresholds(lambda v, x: model.apply(v, x, train=False), variables, batches)
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
    jaxsnn.authors_protocol.thresholds(lambda v, x: model.apply(v, x, train=False), variables, batches)
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
  model = TinyBN()
  variables = model.init(jax.random.key(0), X)
  th = jaxsnn.thresholds(jaxsnn.calibrate(model.apply, variables, [X]))
  snn = jaxsnn.convert(model.apply, variables, X, th)
  with pytest.raises(dataclasses.FrozenInstanceError):
    snn.thresholds = {}
  # The data are the leaves (variables, thresholds, potentials, offsets, delay), the rest is static: doubling every
  # leaf doubles exactly those, and the result is a network of the same program.
  leaves, treedef = jax.tree_util.tree_flatten(snn)
  assert len(leaves) == (len(jax.tree_util.tree_leaves(variables)) + len(snn.thresholds)
                         + len(snn.initial_potential) + len(snn.offsets) + 1)
  doubled = jax.tree_util.tree_unflatten(treedef, [2 * leaf for leaf in leaves])
  assert isinstance(doubled, jaxsnn.SpikingNetwork) and doubled.traced == snn.traced
  assert doubled.site_shapes == snn.site_shapes and doubled.neuron is snn.neuron
  for name in snn.thresholds:
    np.testing.assert_array_equal(doubled.thresholds[name], 2 * snn.thresholds[name])
  assert int(doubled.readout_delay) == 2 * int(snn.readout_delay)
  with pytest.raises(ValueError, match="cannot replace \\['neuron'\\]"):
    snn.replace(neuron=jaxsnn.IF())
  with pytest.raises(ValueError, match="initial_potential 'TinyBN/relu' has 1 non-finite"):
    snn.replace(initial_potential={"TinyBN/relu": jnp.full((8,), 0.5).at[3].set(jnp.nan)})
  with pytest.raises(ValueError, match="offsets 'TinyBN/relu' has shape \\(3,\\)"):
    snn.replace(offsets={"TinyBN/relu": jnp.zeros(3)})
  with pytest.raises(ValueError, match="unexpected: \\['nope'\\]"):
    snn.replace(offsets={"nope": jnp.zeros(3)})


# ---- 5. clear errors where users land ------------------------------------------------------------------------------


def test_float32_thresholds_on_a_bfloat16_network_are_cast_at_convert():
  model = TinyBN()
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

  with pytest.raises(jaxsnn.ConversionError, match="reduces over the batch axis"):
    jaxsnn.convert(pooled, (w1, w2), X, {})

  def transposed(v, x):  # a ReLU of values whose leading axis is a feature axis (the batch is last)
    return (jax.nn.relu((x @ v[0]).T).T @ v[1])

  with pytest.raises(jaxsnn.ConversionError, match="leading axis is not the batch axis"):
    jaxsnn.convert(transposed, (w1, w2), X, {"relu": jnp.ones((8, 16))})


# ---- 6. calibration never sees padding ---------------------------------------------------------------------------


# ---- 7. module boundaries ----------------------------------------------------------------------------------------


# ---- bfloat16 networks keep float32 neuron state ----------------------------------------------------------------


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
    with pytest.raises(ValueError, match="num_steps must be a positive int"):
      jaxsnn.simulate(snn, x, steps)
  for steps in (2.5, True, None):
    with pytest.raises(ValueError, match="num_steps must be a positive int"):
      jaxsnn.simulate(snn, x, steps)
  with pytest.raises(ValueError, match="block_size must be a positive int"):
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


# ---- random ops anywhere are an error; a final softmax is dropped, any other is an error ----------------------------
def _noise_cases():
  key = jax.random.key(0)

  def on_the_input(v, x):  # input-only noise: computed once, the SNN would reproduce one fixed draw
    return jax.nn.relu((x + jax.random.normal(key, x.shape)) @ v[0]) @ v[1]

  def rng_uniform(v, x):
    return (jax.nn.relu(x @ v[0]) * jax.lax.rng_uniform(0.0, 1.0, (8,))) @ v[1]

  def rng_bit_generator(v, x):
    _, bits = jax.lax.rng_bit_generator(jnp.zeros(4, jnp.uint32), (8,))
    return (jax.nn.relu(x @ v[0]) * (bits % 2).astype(jnp.float32)) @ v[1]

  def threefry(v, x):
    from jax.extend import random as jrandom
    bits = jrandom.threefry_2x32(jnp.zeros(2, jnp.uint32), jnp.arange(8, dtype=jnp.uint32))
    return (jax.nn.relu(x @ v[0]) * (bits % 2).astype(jnp.float32)) @ v[1]

  def in_a_cond(v, x):  # a draw inside a lax.cond whose predicate (a weight) is unknown when tracing
    noise = jax.lax.cond(v[0][0, 0] > 0, lambda: jax.random.uniform(key, (8,)), lambda: jnp.ones(8))
    return (jax.nn.relu(x @ v[0]) * noise) @ v[1]

  return [(on_the_input, "random_bits"), (rng_uniform, "rng_uniform"), (rng_bit_generator, "rng_bit_generator"),
          (threefry, "threefry2x32"), (in_a_cond, "random_bits' (inside 'cond')")]


@pytest.mark.parametrize("case", range(5))
def test_random_primitives_anywhere_are_named_at_convert_and_calibrate(case):
  net, primitive = _noise_cases()[case]
  w = dense_params(8, [6, 8, 3])
  for call, caller in ((lambda: jaxsnn.convert(net, w, X, {}), "jaxsnn.convert"),
                       (lambda: jaxsnn.calibrate(net, w, [X]), "jaxsnn.calibrate")):
    with pytest.raises(jaxsnn.ConversionError) as info:
      call()
    msg = str(info.value)
    assert msg.startswith(f"{caller}: primitive '{primitive}") and "draws random numbers" in msg, msg
    assert "hint: call the model in eval mode: deterministic dropout" in msg


def test_a_random_op_whose_result_is_unused_is_no_error():
  w1, w2 = dense_params(9, [6, 8, 3])

  def net(v, x):
    jax.random.normal(jax.random.key(0), (3,))  # dead code: the output does not depend on it
    return jax.nn.relu(x @ v[0]) @ v[1]

  converges(net, (w1, w2), X)


def test_a_softmax_that_is_not_the_last_op_is_an_error_that_says_where_it_may_be():
  w1, w2, w3 = dense_params(10, [6, 8, 8, 3])
  net = lambda v, x: jax.nn.relu(jax.nn.softmax(jax.nn.relu(x @ v[0]) @ v[1]) @ v[1]) @ v[2]  # noqa: E731
  with pytest.raises(jaxsnn.ConversionError, match=r"(?s)primitive 'exp'.*hint: softmax inside the network has no "
                                                   r"spiking form; jaxsnn drops a softmax or log_softmax only as the "
                                                   r"network's last operation"):
    jaxsnn.convert(net, (w1, w2, w3), X, {})
  then_scaled = lambda v, x: 2.0 * jax.nn.log_softmax(jax.nn.relu(x @ v[0]) @ v[2])  # noqa: E731
  with pytest.raises(jaxsnn.ConversionError, match="primitive 'exp'"):
    jaxsnn.convert(then_scaled, (w1, w2, w3), X, {})


def test_a_final_softmax_over_the_batch_or_part_of_the_output_is_an_exact_error():
  w1, _, w3 = dense_params(11, [6, 8, 8, 3])
  over_batch = lambda v, x: jax.nn.softmax(jax.nn.relu(x @ v[0]) @ v[1], axis=0)  # noqa: E731
  with pytest.raises(jaxsnn.ConversionError, match=r"(?s)ends in softmax over axes \(0,\) of its output.*leave it "
                                                   r"out of apply_fn"):
    jaxsnn.convert(over_batch, (w1, w3), X, {})
  w4 = dense_params(12, [8, 6])[0]

  def per_row(v, x):  # output [batch, 2, 3], softmax over the last axis only: it changes the argmax over all 6
    return jax.nn.log_softmax((jax.nn.relu(x @ v[0]) @ v[1]).reshape(-1, 2, 3), axis=-1)

  with pytest.raises(jaxsnn.ConversionError, match=r"(?s)ends in log_softmax over axes \(2,\) of its output of shape "
                                                   r"\(16, 2, 3\).*every axis but the batch axis"):
    jaxsnn.convert(per_row, (w1, w4), X, {})
