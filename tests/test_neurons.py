"""Neuron semantics: the paper's worked examples, a numpy re-statement, and the SNM invariant."""

import math

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import jaxsnn
from jaxsnn import neurons


def run(neuron, threshold, currents):
  """Runs a neuron over a [T, ...] current sequence; returns the [T, ...] spikes and the final state."""
  threshold = jnp.asarray(threshold, jnp.float32)
  currents = jnp.asarray(currents, jnp.float32)
  state = neuron.init(currents.shape[1:])
  state, spikes = jax.lax.scan(lambda s, z: neuron.step(threshold, s, z), state, currents)
  return np.asarray(spikes), state


# ---- The paper's Fig. 1 / Fig. 2 example ------------------------------------------------------------------------
# Two presynaptic neurons with threshold 1: x1 sends 3 positive spikes (steps 1-3) through w1 = 1, x2 sends 2 spikes
# through w2 that arrive late (steps 4-5). Output neuron a has w2 = -1: ANN value relu(3 - 2) = 1. Output neuron b
# has w2 = -1.5: ANN value relu(3 - 3) = 0. Then 3 silent steps.
FIG_W2 = np.array([-1.0, -1.5])
FIG_CURRENTS = np.array([[1, 1]] * 3 + [list(FIG_W2)] * 2 + [[0, 0]] * 3, np.float32)
FIG_ANN = np.maximum(3 * 1.0 + 2 * FIG_W2, 0)  # [1, 0]


def test_paper_example_if_overshoots():
  spikes, _ = run(jaxsnn.IF(), 1.0, FIG_CURRENTS)
  # IF fires on each of the first three steps and can never take those spikes back.
  np.testing.assert_array_equal(spikes.sum(0), [3.0, 3.0])
  np.testing.assert_array_equal(spikes[:3], np.ones((3, 2)))


def test_paper_example_snm_gives_the_ann_value():
  spikes, state = run(jaxsnn.SNM(), 1.0, FIG_CURRENTS)
  np.testing.assert_array_equal(spikes.sum(0), FIG_ANN)
  np.testing.assert_array_equal(state.m, FIG_ANN.astype(np.int32))
  # Neuron a: +,+,+ then -,- at steps 4 and 5.
  np.testing.assert_array_equal(spikes[:, 0], [1, 1, 1, -1, -1, 0, 0, 0])
  # Neuron b: +,+,+ then -,- and one more negative spike from the residual -1 at step 6; then memory is 0.
  np.testing.assert_array_equal(spikes[:, 1], [1, 1, 1, -1, -1, -1, 0, 0])


def test_paper_example_signed_if_without_memory_goes_negative():
  currents = np.concatenate([FIG_CURRENTS, [[-1.0, -1.0]] * 3], 0).astype(np.float32)  # more late inhibition
  spikes, _ = run(jaxsnn.SignedIF(), 1.0, currents)
  snm, _ = run(jaxsnn.SNM(), 1.0, currents)
  assert (spikes.sum(0) < 0).all()  # no memory: the net output goes below zero, unlike a ReLU
  np.testing.assert_array_equal(snm.sum(0), [0.0, 0.0])


# ---- numpy re-statement of the equations -------------------------------------------------------------------------
def numpy_neuron(kind, threshold, currents):
  th = np.float32(threshold)
  v = np.zeros(currents.shape[1:], np.float32)
  m = np.zeros(currents.shape[1:], np.int64)
  out = []
  for z in currents.astype(np.float32):
    v = (v + z).astype(np.float32)
    pos = (v >= th) & (th > 0)
    if kind == "snm":
      neg = (v <= -th) & (m > 0) & (th > 0)
    elif kind == "signed":
      neg = (v <= -th) & (th > 0)
    else:
      neg = np.zeros_like(pos)
    s = np.where(pos, th, np.where(neg, -th, np.float32(0))).astype(np.float32)
    if kind == "if_zero":
      v = np.where(pos, np.float32(0), v).astype(np.float32)
    else:
      v = (v - s).astype(np.float32)
    m = m + pos.astype(np.int64) - neg.astype(np.int64)
    out.append(s)
  return np.stack(out), v, m


@pytest.mark.parametrize("kind,neuron", [("snm", jaxsnn.SNM()), ("if", jaxsnn.IF()), ("if_zero", jaxsnn.IF("zero")),
                                         ("signed", jaxsnn.SignedIF())])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_neuron_matches_numpy_exactly(kind, neuron, seed):
  rng = np.random.default_rng(seed)
  currents = rng.normal(0.0, 1.0, (200, 64)).astype(np.float32) * rng.uniform(0.1, 3.0, 64).astype(np.float32)
  threshold = np.float32(rng.uniform(0.2, 2.0))
  spikes, state = run(neuron, threshold, currents)
  want, v, m = numpy_neuron(kind, threshold, currents)
  np.testing.assert_array_equal(spikes, want)
  np.testing.assert_array_equal(np.asarray(state.v), v)
  if kind == "snm":
    np.testing.assert_array_equal(np.asarray(state.m), m)


@pytest.mark.parametrize("neuron", [jaxsnn.SNM(), jaxsnn.IF(), jaxsnn.IF("zero"), jaxsnn.SignedIF()])
def test_per_neuron_thresholds_and_dead_units(neuron):
  rng = np.random.default_rng(3)
  currents = rng.normal(0.5, 2.0, (100, 5)).astype(np.float32)
  threshold = np.array([0.0, 0.5, 1.0, 2.0, 0.0], np.float32)
  spikes, _ = run(neuron, threshold, currents)
  np.testing.assert_array_equal(spikes[:, [0, 4]], 0.0)  # threshold 0: never fires
  # at most one spike per step, of amplitude exactly +-threshold
  assert np.all((spikes == 0) | (np.abs(spikes) == threshold[None]))


def test_init_dtypes_and_memory_is_an_integer():
  state = jaxsnn.SNM().init((2, 3), jnp.float32)
  assert state.v.dtype == jnp.float32 and state.v.shape == (2, 3)
  assert state.m.dtype == jnp.int32
  assert isinstance(state, neurons.SNMState)


def test_bad_reset_rule():
  with pytest.raises(ValueError, match="reset must be 'subtract' or 'zero'"):
    jaxsnn.IF("hard")


# ---- SNM invariant ------------------------------------------------------------------------------------------------
# Dyadic currents and thresholds keep every sum exact in float32, so the inequality is checked without tolerance.
@settings(max_examples=60, deadline=None)
@given(
    currents=st.lists(st.integers(-64, 64), min_size=1, max_size=40),
    threshold_exp=st.integers(-3, 3),
)
def test_snm_memory_nonnegative_and_converges_to_relu(currents, threshold_exp):
  theta = 2.0 ** threshold_exp
  z = np.array(currents, np.float32) / 16.0
  settle = int(math.ceil(np.abs(z).sum() / theta)) + 2
  seq = np.concatenate([z, np.zeros(settle, np.float32)])[:, None]
  neuron = jaxsnn.SNM()
  state = neuron.init((1,))
  step = jax.jit(neuron.step)
  memory = []
  for c in seq:
    state, _ = step(jnp.float32(theta), state, jnp.asarray(c))
    memory.append(int(state.m[0]))
  assert min(memory) >= 0
  relu_sum = max(float(z.astype(np.float64).sum()), 0.0)
  assert abs(theta * memory[-1] - relu_sum) < theta
