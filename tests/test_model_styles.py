"""Every JAX model style converts: Flax linen, Flax NNX, Equinox, plain functions of a params pytree. Site names keep
the module path, errors name the module, modules with non-array leaves work as variables; and the silent failures of
old (batch-dependent networks, GELU, bfloat16 max pooling) are errors or fixed."""

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxsnn
from conftest import rel_error, residual_setup

X = jax.random.normal(jax.random.key(1), (16, 4))


def converges(apply_fn, variables, x=X, steps=(64, 256, 1024)):
  """Calibrate, convert and simulate; the SNN's readout error against the ANN falls with T, small at the end."""
  snn, _ = jaxsnn.recipes.paper(apply_fn, variables, [x])
  trace = jaxsnn.simulate(snn, x, steps[-1])
  ann = apply_fn(variables, x)
  errors = [rel_error(trace.outputs[t - 1], ann) for t in steps]
  assert errors[0] > errors[-1] and errors[-1] < 2e-2, errors
  return snn


class NNXNet(nnx.Module):
  def __init__(self, rngs):
    self.encoder = nnx.Linear(4, 16, rngs=rngs)
    self.hidden = nnx.Linear(16, 8, rngs=rngs)
    self.head = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    return self.head(nnx.relu(self.hidden(nnx.relu(self.encoder(x)))))


def test_flax_nnx_converges_and_sites_keep_the_module_path():
  graphdef, state = nnx.split(NNXNet(nnx.Rngs(0)))
  apply_fn = lambda state, x: nnx.merge(graphdef, state)(x)  # noqa: E731
  snn = converges(apply_fn, state)
  assert snn.site_names == ("encoder/relu", "hidden/relu")


def test_equinox_module_as_variables_converges_and_sites_keep_the_module_path():
  mlp = eqx.nn.MLP(4, 3, 16, 2, key=jax.random.key(0))  # non-array leaves: its activation functions
  apply_fn = lambda model, x: jax.vmap(model)(x)  # noqa: E731
  snn = converges(apply_fn, mlp)
  assert snn.site_names == ("layers/0/relu", "layers/1/relu")
  # The network's data are the module's arrays; the rest (activations, sizes) belongs to its definition.
  assert all(isinstance(leaf, jax.Array) for leaf in jax.tree_util.tree_leaves(snn.variables))
  assert len(jax.tree_util.tree_leaves(snn.variables)) == 6


def test_plain_function_of_a_params_pytree_converges_and_names_sites_by_their_layer():
  rng = np.random.default_rng(0)
  params = {"layer1": {"w": jnp.asarray(rng.normal(size=(4, 16)) / 2, jnp.float32), "b": jnp.zeros(16)},
            "layer2": {"w": jnp.asarray(rng.normal(size=(16, 3)) / 4, jnp.float32)}}
  apply_fn = lambda p, x: jax.nn.relu(x @ p["layer1"]["w"] + p["layer1"]["b"]) @ p["layer2"]["w"]  # noqa: E731
  snn = converges(apply_fn, params)
  assert snn.site_names == ("layer1/relu",)


class GeluNNX(nnx.Module):
  def __init__(self, rngs):
    self.first = nnx.Linear(4, 8, rngs=rngs)
    self.second = nnx.Linear(8, 8, rngs=rngs)
    self.head = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    return self.head(nnx.gelu(self.second(nnx.relu(self.first(x)))))


def test_errors_name_the_nnx_and_equinox_module_and_gelu_gets_its_own_hint():
  graphdef, state = nnx.split(GeluNNX(nnx.Rngs(0)))
  apply_fn = lambda s, x: nnx.merge(graphdef, s)(x)  # noqa: E731
  with pytest.raises(jaxsnn.ConversionError, match=r"(?s)in module: second\n  hint: GELU has no spiking form"):
    jaxsnn.convert(apply_fn, state, X, {"first/relu": jnp.ones(8)})
  mlp = eqx.nn.MLP(4, 3, 8, 2, activation=jax.nn.gelu, key=jax.random.key(0))
  with pytest.raises(jaxsnn.ConversionError, match="It uses GELU, which has no spiking form"):
    jaxsnn.convert(lambda m, x: jax.vmap(m)(x), mlp, X, {})
  exact_gelu = lambda v, x: jax.nn.gelu(jax.nn.relu(x @ v) @ v, approximate=False) @ v  # noqa: E731
  v = jnp.ones((4, 4))
  with pytest.raises(jaxsnn.ConversionError, match="hint: GELU has no spiking form"):
    jaxsnn.convert(exact_gelu, v, X, {"relu": jnp.ones(4)})


class TrainModeBN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.BatchNorm(use_running_average=False)(nn.Dense(8)(x))  # batch statistics on the input-only path
    return nn.Dense(3)(nn.relu(nn.Dense(8)(nn.relu(x))))


def test_batch_dependent_networks_are_an_error_at_convert():
  model = TrainModeBN()
  variables = model.init(jax.random.key(0), X)
  apply_fn = lambda v, x: model.apply(v, x, mutable=["batch_stats"])[0]  # noqa: E731
  # The failure this prevents: the same images answered differently depending on the rest of the batch.
  assert not np.allclose(apply_fn(variables, X)[:4], apply_fn(variables, X[:4]), atol=1e-3)
  with pytest.raises(jaxsnn.ConversionError, match=r"(?s)reduces over the batch axis.*in module: TrainModeBN/BatchNorm_0"
                                                   r".*BatchNorm in eval mode"):
    jaxsnn.convert(apply_fn, variables, X, {})
  centred = lambda v, x: jax.nn.relu((x - x.mean(0)) @ v) @ v.T  # noqa: E731
  with pytest.raises(jaxsnn.ConversionError, match="reduces over the batch axis"):
    jaxsnn.convert(centred, jnp.ones((4, 4)), X, {})


def test_bfloat16_network_with_max_pooling_converges_to_t_1024():
  apply_fn, variables, x, _ = residual_setup()  # conv + BatchNorm + residual + max pool + avg pool + dense
  bf16 = lambda v, x: apply_fn(jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), v), x)  # noqa: E731
  xb = x.astype(jnp.bfloat16)
  snn = jaxsnn.convert(bf16, variables, xb, jaxsnn.thresholds(jaxsnn.calibrate(bf16, variables, [xb])))
  assert snn.max_sites and snn.state_dtype == jnp.float32
  ann = np.asarray(bf16(variables, xb), np.float32)
  trace = jaxsnn.simulate(snn, xb, 1024)
  errors = [rel_error(trace.outputs[t - 1], ann) for t in (64, 256, 512, 1024)]
  assert errors[0] > errors[1] > errors[2] > errors[3] and errors[3] < 0.03, errors
