"""Differentiable simulation: surrogate gradients reach every input of the simulation while the forward spikes stay
exact; without a surrogate, differentiating spikes is an error; the relaxed model checks the plumbing against finite
differences; rematerialisation saves memory and changes nothing."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsnn
from jaxsnn import surrogates
from conftest import residual_setup

KINDS = [surrogates.sigmoid(3.0), surrogates.fast_sigmoid(3.0), surrogates.triangle(1.0),
         surrogates.straight_through(1.0)]


class Small(nn.Module):
  """Conv, max pool, average pool, dense: every kind of op a gradient must pass."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(3, (3, 3))(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Dense(5)(x.reshape(x.shape[0], -1)))
    return nn.Dense(3)(x)


@functools.cache
def small():
  model = Small()
  x = jax.random.normal(jax.random.key(0), (3, 4, 4, 2))
  variables = model.init(jax.random.key(1), x)
  th = jaxsnn.thresholds(jaxsnn.calibrate(model.apply, variables, [x]))
  return model.apply, variables, x, th


@pytest.mark.parametrize("n", range(4))
@pytest.mark.parametrize("block", [None, 3])
def test_forward_spikes_are_bit_identical_with_every_surrogate(n, block):
  """Every neuron under both schedules; each surrogate kind meets two of the neurons under each schedule (all 32
  pairings compiled 32 + 8 programs for what 16 + 8 show)."""
  neuron = [jaxsnn.SNM(), jaxsnn.IF(), jaxsnn.IF("zero"), jaxsnn.SignedIF()][n]
  apply_fn, variables, x, th = residual_setup()
  snn = jaxsnn.convert(apply_fn, variables, x, th, neuron=neuron, initial_potential=0.5)
  exact = jaxsnn.simulate(snn, x, 10, block_size=block)
  for s in (KINDS[n], KINDS[(n + 1) % len(KINDS)]):
    got = jaxsnn.simulate(snn, x, 10, block_size=block, surrogate=s)
    np.testing.assert_array_equal(got.outputs, exact.outputs)
    for k in exact.pos_spikes:
      np.testing.assert_array_equal(got.pos_spikes[k], exact.pos_spikes[k])
      np.testing.assert_array_equal(got.neg_spikes[k], exact.neg_spikes[k])


def loss_of(snn, x, steps=6, surrogate=None):
  w = jnp.asarray(np.random.default_rng(3).normal(size=(x.shape[0], 3)), jnp.float32)
  return jnp.sum(jaxsnn.simulate(snn, x, steps, surrogate=surrogate, tallies=False).outputs[-1] * w.astype(
      snn.state_dtype))


def test_differentiating_spikes_without_a_surrogate_is_an_error_and_the_analog_part_is_fine():
  apply_fn, variables, x, th = small()
  snn = jaxsnn.convert(apply_fn, variables, x, th)
  inputs = {"input": lambda z: loss_of(snn, z), "variables": lambda v: loss_of(snn.replace(variables=v), x),
            "thresholds": lambda t: loss_of(snn.replace(thresholds=t), x),
            "initial potential": lambda p: loss_of(snn.replace(initial_potential=p), x)}
  args = {"input": x, "variables": variables, "thresholds": th, "initial potential": snn.initial_potential}
  for name, f in inputs.items():
    with pytest.raises(ValueError, match="firing decision.*Pass a surrogate"):
      jax.grad(f)(args[name])
  # The output layer's bias reaches the readout without passing a spike: its exact gradient needs no surrogate.
  def last_bias(b):
    v = jax.tree_util.tree_map(lambda a: a, variables)
    v["params"]["Dense_1"]["bias"] = b
    return loss_of(snn.replace(variables=v), x)

  w = np.random.default_rng(3).normal(size=(x.shape[0], 3)).sum(0)
  np.testing.assert_allclose(jax.grad(last_bias)(variables["params"]["Dense_1"]["bias"]), w, rtol=1e-5)


@pytest.mark.parametrize("surrogate", [surrogates.sigmoid(1.5), surrogates.fast_sigmoid(1.5)])
def test_relaxed_model_gradients_match_finite_differences_for_every_input(surrogate):
  """The relaxed model (soft spikes in the forward pass too) is one smooth function: its jax.grad, which runs the
  same backward graph as the surrogate gradient, must equal its finite differences, for the input, the weights, the
  thresholds, the initial potentials and the offsets."""
  with jax.enable_x64(True):
    apply_fn, variables, x, th = small()
    to64 = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), t)  # noqa: E731
    variables, x, th = to64(variables), jnp.asarray(x, jnp.float64), to64(th)
    snn = jaxsnn.convert(apply_fn, variables, x, th, initial_potential=0.3)
    relaxed = surrogate.relax()
    fields = {
        "input": (x, lambda z: loss_of(snn, z, surrogate=relaxed)),
        "variables": (variables, lambda v: loss_of(snn.replace(variables=v), x, surrogate=relaxed)),
        "thresholds": (snn.thresholds, lambda t: loss_of(snn.replace(thresholds=t), x, surrogate=relaxed)),
        "initial_potential": (snn.initial_potential,
                              lambda p: loss_of(snn.replace(initial_potential=p), x, surrogate=relaxed)),
        "offsets": (snn.offsets, lambda o: loss_of(snn.replace(offsets=o), x, surrogate=relaxed)),
    }
    rng = np.random.default_rng(0)
    for name, (value, f) in fields.items():
      grad = jax.grad(f)(value)
      leaves, treedef = jax.tree_util.tree_flatten(value)
      grads = jax.tree_util.tree_leaves(grad)
      assert any(np.abs(np.asarray(g)).max() > 1e-6 for g in grads), f"{name}: no gradient reached it"
      for _ in range(4):  # a few random coordinates of a few leaves
        i = int(rng.integers(len(leaves)))
        flat = np.asarray(leaves[i]).ravel().copy()
        candidates = np.flatnonzero(flat > 0) if name == "thresholds" else np.arange(flat.size)  # live neurons
        j = int(rng.choice(candidates))
        eps = 1e-5 * max(1.0, abs(flat[j]))

        def at(delta):
          moved = flat.copy()
          moved[j] += delta
          new = list(leaves)
          new[i] = jnp.asarray(moved.reshape(np.shape(leaves[i])), jnp.float64)
          return float(f(jax.tree_util.tree_unflatten(treedef, new)))

        fd = (at(eps) - at(-eps)) / (2 * eps)
        got = float(np.asarray(grads[i]).ravel()[j])
        assert got == pytest.approx(fd, rel=1e-4, abs=1e-7), (name, i, j, got, fd)


class STENeuron:
  """An independent re-statement of SNM with a surrogate gradient, by the straight-through trick
  ``H(u) + S(u) - stop_gradient(S(u))`` instead of jaxsnn's custom derivative of the firing decision."""

  def __init__(self, surrogate):
    self.s = surrogate

  def step(self, threshold, state, current, fire):
    v = state.v + current
    theta = jnp.asarray(threshold, v.dtype)
    # The surrogate's width is a fixed fraction of the threshold: its shape, not a function of θ to differentiate.
    scale = jax.lax.stop_gradient(jnp.where(theta > 0, theta, 1))

    def spike(u_v):
      smooth = self.s.step((u_v - theta) / scale)
      return (u_v >= theta).astype(v.dtype) + smooth - jax.lax.stop_gradient(smooth)

    live = theta > 0
    pos = jnp.where(live, spike(v), 0)
    neg = jnp.where(live & (state.m > 0), spike(-v), 0)
    s = theta * (pos - neg)
    m = state.m + (pos >= 0.5).astype(state.m.dtype) - (neg >= 0.5).astype(state.m.dtype)
    return jaxsnn.neurons.SNMState(v=v - s, m=m), s.astype(threshold.dtype)


def test_surrogate_gradient_equals_the_straight_through_restatement():
  apply_fn, variables, x, th = small()
  s = surrogates.sigmoid(2.0)
  ste = STENeuron(s)
  neuron = jaxsnn.Neuron(init=jaxsnn.SNM().init, step=ste.step, name="SNM (straight-through)", counters=("m",))
  ours = jaxsnn.convert(apply_fn, variables, x, th, initial_potential=0.5)
  theirs = jaxsnn.convert(apply_fn, variables, x, th, initial_potential=0.5, neuron=neuron)
  g1 = jax.grad(lambda v: loss_of(ours.replace(variables=v), x, surrogate=s))(variables)
  g2 = jax.grad(lambda v: loss_of(theirs.replace(variables=v), x, surrogate=s))(variables)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g1, g2)
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(g1))
  gx1 = jax.grad(lambda z: loss_of(ours, z, surrogate=s))(x)
  gx2 = jax.grad(lambda z: loss_of(theirs, z, surrogate=s))(x)
  np.testing.assert_allclose(gx1, gx2, rtol=1e-5, atol=1e-6)
  for field in ("thresholds", "initial_potential", "offsets"):
    g1 = jax.grad(lambda t: loss_of(ours.replace(**{field: t}), x, surrogate=s))(getattr(ours, field))
    g2 = jax.grad(lambda t: loss_of(theirs.replace(**{field: t}), x, surrogate=s))(getattr(theirs, field))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g1, g2)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(g1)), field


def test_surrogate_derivatives_have_unit_area_and_their_steps_integrate_them():
  du = 80 / 400000
  with jax.enable_x64(True):
    u = jnp.arange(-200000, 200001, dtype=jnp.float64) * du
    for s in KINDS:
      g = np.asarray(s.derivative(u))
      assert float(g.sum() * du) == pytest.approx(1.0, abs=2e-2 if s.kind == "fast_sigmoid" else 1e-3), s
      step = np.asarray(s.step(u))
      assert step[0] == pytest.approx(0, abs=2e-2) and step[-1] == pytest.approx(1, abs=2e-2)
      assert float(s.step(jnp.zeros((), jnp.float64))) == pytest.approx(0.5)
      slope = np.gradient(step, du)
      jump = np.abs(np.diff(g, prepend=g[0])) > 1e-3  # the triangle's and rectangle's corners, and their neighbours
      kink = jump | np.roll(jump, -1) | np.roll(jump, 1)
      np.testing.assert_allclose(slope[~kink][1000:-1000], g[~kink][1000:-1000], atol=1e-3 * s.sharpness)
  with pytest.raises(ValueError, match="sharpness must be > 0"):
    surrogates.sigmoid(0.0)
  with pytest.raises(ValueError, match="surrogate must be a jaxsnn.surrogates.Surrogate"):
    jaxsnn.simulate(jaxsnn.convert(*small()), small()[2], 4, surrogate="sigmoid")


def test_remat_gives_the_same_gradients_with_less_memory():
  apply_fn, variables, x, th = residual_setup()
  snn = jaxsnn.convert(apply_fn, variables, x, th, initial_potential=0.5)
  s = surrogates.sigmoid()

  def grad(remat):
    def f(v):
      out = jaxsnn.simulate(snn.replace(variables=v), x, 32, surrogate=s, remat=remat, tallies=False).outputs[-1]
      return jnp.sum(out ** 2)
    return jax.jit(jax.grad(f))

  plain, saved = grad(False), grad(True)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), plain(variables),
                         saved(variables))
  memory = {k: f.lower(variables).compile().memory_analysis().temp_size_in_bytes
            for k, f in (("plain", plain), ("remat", saved))}
  assert memory["remat"] < 0.7 * memory["plain"], memory
