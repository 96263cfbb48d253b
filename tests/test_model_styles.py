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


# ---- random ops: train-mode dropout in every style is an error, eval mode converts ------------------------------------
class DropoutLinen(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Dense(8)(x))
    x = nn.Dropout(0.5, deterministic=not train)(x)
    return nn.Dense(3)(x)


class DropoutNNX(nnx.Module):
  def __init__(self, rngs):
    self.hidden = nnx.Linear(4, 8, rngs=rngs)
    self.dropout = nnx.Dropout(0.5, rngs=rngs)
    self.head = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    return self.head(self.dropout(nnx.relu(self.hidden(x))))


def dropout_nets(train: bool):
  """(style, apply_fn, variables, module of the dropout) of one Dense-ReLU-Dropout-Dense net per model style, called
  in train mode (train=True: a dropout mask drawn from a key) or in eval mode."""
  key = jax.random.key(3)
  linen = DropoutLinen()
  variables = linen.init(jax.random.key(0), X)
  nets = [("linen", lambda v, x: linen.apply(v, x, train=train, rngs={"dropout": key}), variables, "DropoutLinen/Dropout_0"),
          ("linen-legacy-key", lambda v, x: linen.apply(v, x, train=train, rngs={"dropout": jax.random.PRNGKey(3)}),
           variables, "DropoutLinen/Dropout_0")]
  model = DropoutNNX(nnx.Rngs(0))
  model.train() if train else model.eval()
  graphdef, state = nnx.split(model)
  nets.append(("nnx", lambda s, x: nnx.merge(graphdef, s)(x), state, "dropout"))
  keys = jax.random.split(jax.random.key(1), 2)
  seq = eqx.nn.Sequential([eqx.nn.Linear(4, 8, key=keys[0]), eqx.nn.Lambda(jax.nn.relu),
                           eqx.nn.Dropout(0.5, inference=not train), eqx.nn.Linear(8, 3, key=keys[1])])
  nets.append(("equinox", lambda m, x: jax.vmap(lambda xi: m(xi, key=key))(x), seq, "layers/2"))
  w = {"hidden": jnp.ones((4, 8)) / 4, "head": jnp.ones((8, 3)) / 8}

  def plain(p, x):
    h = jax.nn.relu(x @ p["hidden"])
    if train:
      h = jnp.where(jax.random.bernoulli(key, 0.5, h.shape), h / 0.5, 0.0)
    return h @ p["head"]

  nets.append(("plain", plain, w, None))
  return nets


@pytest.mark.parametrize("style", ["linen", "linen-legacy-key", "nnx", "equinox", "plain"])
def test_train_mode_dropout_is_an_error_at_convert_and_calibrate_naming_op_module_and_fix(style):
  _, apply_fn, variables, module = next(n for n in dropout_nets(train=True) if n[0] == style)
  # The failure this prevents: the SNN would reproduce one fixed dropout mask of the train-mode ANN.
  where = rf"in module: {module}\n" if module else ""
  pattern = (r"(?s)^{caller}: primitive 'random_bits' draws random numbers.*" + where
             + r".*hint: call the model in eval mode: deterministic dropout, e.g. model.apply\(v, x, train=False\)")
  with pytest.raises(jaxsnn.ConversionError, match=pattern.format(caller="jaxsnn.convert")):
    jaxsnn.convert(apply_fn, variables, X, {})
  with pytest.raises(jaxsnn.ConversionError, match=pattern.format(caller="jaxsnn.calibrate")):
    jaxsnn.calibrate(apply_fn, variables, [X])


@pytest.mark.parametrize("style", ["linen", "nnx", "equinox", "plain"])
def test_the_same_nets_in_eval_mode_convert(style):
  _, apply_fn, variables, _ = next(n for n in dropout_nets(train=False) if n[0] == style)
  converges(apply_fn, variables)


# ---- a final softmax / log_softmax is dropped (it changes no argmax), in every style -------------------------------------
class SoftmaxLinen(nn.Module):
  final: object = None

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(3)(nn.relu(nn.Dense(16)(x)))
    return x if self.final is None else self.final(x)


class SoftmaxNNX(nnx.Module):
  def __init__(self, rngs, final=None):
    self.hidden = nnx.Linear(4, 16, rngs=rngs)
    self.head = nnx.Linear(16, 3, rngs=rngs)
    self.final = final

  def __call__(self, x):
    x = self.head(nnx.relu(self.hidden(x)))
    return x if self.final is None else self.final(x)


class EquinoxCNN(eqx.Module):
  """Equinox's MNIST CNN example (https://docs.kidger.site/equinox/examples/mnist/), small, with a ReLU in place of
  its sigmoid (``activation``): a plain list of layers and functions, ending in ``jax.nn.log_softmax``."""

  layers: list

  def __init__(self, key, activation=jax.nn.relu):
    key1, key2, key3, key4 = jax.random.split(key, 4)
    self.layers = [eqx.nn.Conv2d(1, 3, kernel_size=4, key=key1), eqx.nn.MaxPool2d(kernel_size=2), jax.nn.relu,
                   jnp.ravel, eqx.nn.Linear(75, 16, key=key2), activation, eqx.nn.Linear(16, 12, key=key3),
                   jax.nn.relu, eqx.nn.Linear(12, 4, key=key4), jax.nn.log_softmax]

  def __call__(self, x):
    for layer in self.layers:
      x = layer(x)
    return x


def equinox_sequential(final):
  keys = jax.random.split(jax.random.key(2), 3)
  return eqx.nn.Sequential([eqx.nn.Conv2d(1, 3, kernel_size=4, key=keys[0]), eqx.nn.Lambda(jax.nn.relu),
                            eqx.nn.MaxPool2d(kernel_size=2), eqx.nn.Lambda(jnp.ravel),
                            eqx.nn.Linear(75, 16, key=keys[1]), eqx.nn.Lambda(jax.nn.relu),
                            eqx.nn.Linear(16, 4, key=keys[2])] + ([eqx.nn.Lambda(final)] if final else []))


IMAGES = jax.random.normal(jax.random.key(4), (16, 1, 9, 9))


def softmax_nets():
  """(style, apply_fn, variables, x, logits_fn, dropped) per model style: a net ending in a softmax or log_softmax,
  and the same net without it."""
  linen, plain_linen = SoftmaxLinen(nn.log_softmax), SoftmaxLinen()
  variables = linen.init(jax.random.key(0), X)
  nets = [("linen", linen.apply, variables, X, plain_linen.apply, "log_softmax")]
  graphdef, state = nnx.split(SoftmaxNNX(nnx.Rngs(0), nnx.softmax))
  logits_graphdef, _ = nnx.split(SoftmaxNNX(nnx.Rngs(0)))
  nets.append(("nnx", lambda s, x: nnx.merge(graphdef, s)(x), state, X,
               lambda s, x: nnx.merge(logits_graphdef, s)(x), "softmax"))
  seq = equinox_sequential(jax.nn.log_softmax)
  nets.append(("equinox-sequential", lambda m, x: jax.vmap(m)(x), seq, IMAGES,
               lambda m, x: jax.vmap(m[:-1])(x), "log_softmax"))
  cnn = EquinoxCNN(jax.random.key(5))

  def cnn_logits(m, x):
    def one(xi):
      for layer in m.layers[:-1]:
        xi = layer(xi)
      return xi
    return jax.vmap(one)(x)

  nets.append(("equinox-cnn", lambda m, x: jax.vmap(m)(x), cnn, IMAGES, cnn_logits, "log_softmax"))
  rng = np.random.default_rng(0)
  params = {"hidden": jnp.asarray(rng.normal(size=(4, 16)) / 2, jnp.float32),
            "out": jnp.asarray(rng.normal(size=(16, 3)) / 4, jnp.float32)}
  plain_logits = lambda p, x: jax.nn.relu(x @ p["hidden"]) @ p["out"]  # noqa: E731
  nets.append(("plain", lambda p, x: jax.nn.log_softmax(plain_logits(p, x)), params, X, plain_logits, "log_softmax"))
  return nets


@pytest.mark.parametrize("style", ["linen", "nnx", "equinox-sequential", "equinox-cnn", "plain"])
def test_a_final_softmax_is_dropped_and_said_and_the_snn_reads_out_the_logits(style):
  _, apply_fn, variables, x, logits_fn, dropped = next(n for n in softmax_nets() if n[0] == style)
  logits = logits_fn(variables, x)
  ann = apply_fn(variables, x)
  np.testing.assert_array_equal(np.argmax(ann, -1), np.argmax(logits, -1))  # monotone: the same answers
  stats = jaxsnn.calibrate(apply_fn, variables, [x])
  # The output statistic is the max logit (readout="spike"'s threshold), not the max probability.
  np.testing.assert_allclose(stats.max["output"], np.max(logits, 0), rtol=1e-5, atol=1e-6)
  snn, report = jaxsnn.recipes.paper(apply_fn, variables, [x])
  assert snn.dropped_final == (dropped,)
  note = f"dropped final {dropped}"
  assert note in repr(snn) and note in str(report)
  trace = jaxsnn.simulate(snn, x, 1024)
  errors = [rel_error(trace.outputs[t - 1], logits) for t in (64, 1024)]
  assert errors[0] > errors[1] and errors[1] < 2e-2, errors


def test_a_net_without_a_final_softmax_drops_nothing():
  snn = converges(lambda m, x: jax.vmap(m)(x), eqx.nn.MLP(4, 3, 16, 2, key=jax.random.key(0)))
  assert snn.dropped_final == () and "dropped" not in repr(snn)


# ---- Equinox list layers are named by their index in the list --------------------------------------------------------
def test_equinox_list_layers_are_named_by_python_indexing():
  seq = equinox_sequential(None)
  snn = jaxsnn.convert(lambda m, x: jax.vmap(m)(x), seq, IMAGES,
                       {"layers/1/relu": jnp.ones((3, 6, 6)), "layers/5/relu": jnp.ones(16)})
  assert snn.site_names == ("layers/1/relu", "layers/5/relu")  # seq.layers[1] and seq.layers[5]
  assert snn.max_sites == ("layers/2/reduce_window_max",)  # seq.layers[2], the MaxPool2d (of spikes)
  cnn = EquinoxCNN(jax.random.key(5))
  snn = jaxsnn.convert(lambda m, x: jax.vmap(m)(x), cnn, IMAGES,
                       {"layers/2/relu": jnp.ones((3, 5, 5)), "layers/5/relu": jnp.ones(16),
                        "layers/7/relu": jnp.ones(12)})
  assert snn.site_names == ("layers/2/relu", "layers/5/relu", "layers/7/relu")


def test_errors_name_the_equinox_list_layer_by_python_indexing():
  cnn = EquinoxCNN(jax.random.key(5), activation=jax.nn.sigmoid)  # Equinox's example as written: layers[5] = sigmoid
  assert cnn.layers[5] is jax.nn.sigmoid
  with pytest.raises(jaxsnn.ConversionError,
                     match=r"(?s)primitive 'logistic'.*in module: layers/5\n  hint: .*sigmoid"):
    jaxsnn.convert(lambda m, x: jax.vmap(m)(x), cnn, IMAGES, {})
  keys = jax.random.split(jax.random.key(0), 3)
  seq = eqx.nn.Sequential([eqx.nn.Linear(4, 8, key=keys[0]), eqx.nn.Lambda(jax.nn.relu),
                           eqx.nn.Linear(8, 8, key=keys[1]), eqx.nn.Lambda(jax.nn.gelu),
                           eqx.nn.Linear(8, 3, key=keys[2])])
  with pytest.raises(jaxsnn.ConversionError, match=r"(?s)in module: layers/3\n  hint: GELU has no spiking form"):
    jaxsnn.convert(lambda m, x: jax.vmap(m)(x), seq, X, {})
