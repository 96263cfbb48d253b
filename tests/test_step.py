"""The public pure step function: a lax.scan over it is simulate, bit for bit; time-varying inputs; early stops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsnn
from conftest import dyadic_two_layer, numpy_neuron_run, residual_setup


def scanned(snn, x, steps, **kw):
  def body(state, _):
    state, out = jaxsnn.step(snn, state, **kw)
    return state, (jaxsnn.readout(snn, state), out)

  return jax.lax.scan(body, jaxsnn.init_state(snn, x), None, length=steps)


@pytest.mark.parametrize("neuron,readout", [(jaxsnn.SNM(), "membrane"), (jaxsnn.SNM(), "spike"),
                                            (jaxsnn.IF(), "membrane"), (jaxsnn.IF("zero"), "spike"),
                                            (jaxsnn.SignedIF(), "membrane"), (jaxsnn.SignedIF(), "spike")])
def test_a_scan_over_step_is_simulate_bit_for_bit(neuron, readout):
  apply_fn, variables, x, th = residual_setup()
  snn = jaxsnn.convert(apply_fn, variables, x, th, neuron=neuron, readout=readout, initial_potential=0.25,
                       readout_delay=3)
  steps = 24
  trace = jaxsnn.simulate(snn, x, steps)
  state, (answers, _) = jax.jit(scanned, static_argnums=2)(snn, x, steps)
  np.testing.assert_array_equal(answers, trace.outputs)
  assert int(state.t) == steps
  assert list(state.tallies.pos) == list(trace.pos_spikes)  # network order
  for name in trace.pos_spikes:
    np.testing.assert_array_equal(state.tallies.pos[name], trace.pos_spikes[name])
    np.testing.assert_array_equal(state.tallies.neg[name], trace.neg_spikes[name])
  assert state.maxes, "the net has a max pool: its cumulative-max state is part of the step's state"


def test_step_in_a_python_loop_and_under_vmap_agrees_with_simulate():
  apply_fn, variables, x, th = residual_setup()
  snn = jaxsnn.convert(apply_fn, variables, x, th, initial_potential=0.5)
  trace = jaxsnn.simulate(snn, x, 6)
  state = jaxsnn.init_state(snn, x, tallies=False)
  assert state.tallies is None
  for t in range(6):
    state, _ = jaxsnn.step(snn, state)
    np.testing.assert_array_equal(jaxsnn.readout(snn, state), trace.outputs[t])
  # vmap over a leading axis of several inputs (each a batch of its own).
  xs = jnp.stack([x, -x])
  per = jax.vmap(lambda xi: scanned(snn, xi, 6)[1][0])(xs)
  np.testing.assert_array_equal(per[0], trace.outputs)
  np.testing.assert_array_equal(per[1], jaxsnn.simulate(snn, -x, 6).outputs)


def test_time_varying_input_against_a_numpy_restatement():
  apply_fn, variables, x, th, _ = dyadic_two_layer()
  w1, b1, w2 = (np.asarray(v, np.float64) for v in variables)
  rng = np.random.default_rng(5)
  frames = jnp.asarray(rng.integers(-8, 9, (10,) + x.shape) / 4, jnp.float32)  # a new dyadic input every step
  for kind, neuron in (("SNM", jaxsnn.SNM()), ("IF", jaxsnn.IF())):
    snn = jaxsnn.convert(apply_fn, variables, x, th, neuron=neuron, initial_potential=0.5)

    def body(state, frame):
      state, out = jaxsnn.step(snn, state, frame)
      return state, out

    state, outs = jax.lax.scan(body, jaxsnn.init_state(snn, frames[0]), frames)
    # numpy: the neuron's current changes every step.
    theta = np.asarray(th["relu"], np.float64)
    v = np.broadcast_to(0.5 * theta, (x.shape[0], 5)).copy()
    m = np.zeros_like(v, np.int64)
    want = []
    for frame in np.asarray(frames, np.float64):
      v = v + frame @ w1 + b1
      p = v >= theta
      n = (v <= -theta) & (m > 0) if kind == "SNM" else np.zeros_like(p)
      s = np.where(p, theta, np.where(n, -theta, 0.0))
      v, m = v - s, m + p - n
      want.append(s @ w2)
    np.testing.assert_array_equal(np.asarray(outs, np.float64), np.asarray(want))
    # A step without an input keeps the last one.
    again, out = jaxsnn.step(snn, state)
    np.testing.assert_array_equal(jaxsnn.step(snn, state, frames[-1])[1], out)


def test_constant_input_steps_match_the_numpy_neuron_with_initial_potential():
  apply_fn, variables, x, th, current = dyadic_two_layer(1)
  snn = jaxsnn.convert(apply_fn, variables, x, th, initial_potential=0.5)
  state = jaxsnn.init_state(snn, x)
  for _ in range(9):
    state, _ = jaxsnn.step(snn, state)
  pos, neg, _ = numpy_neuron_run("SNM", current, np.asarray(th["relu"], np.float64),
                                 0.5 * np.asarray(th["relu"], np.float64), 9)
  np.testing.assert_array_equal(state.tallies.pos["relu"], pos)
  np.testing.assert_array_equal(state.tallies.neg["relu"], neg)


def test_early_stop_on_confidence():
  apply_fn, variables, x, th = residual_setup()
  snn = jaxsnn.convert(apply_fn, variables, x, th, initial_potential=0.5)
  # Stop once every sample is confident and its answer has not changed for 8 steps (reachable: the readout
  # converges to the ANN's logits).
  confidence = 0.9 * float(jax.nn.softmax(apply_fn(variables, x)).max(-1).min())
  state, t, stable, last = jaxsnn.init_state(snn, x), 0, 0, None
  while t < 256:
    state, _ = jaxsnn.step(snn, state)
    t += 1
    answer = jaxsnn.readout(snn, state)
    stable = stable + 1 if last is not None and (answer.argmax(-1) == last).all() else 0
    last = answer.argmax(-1)
    if stable >= 8 and (jax.nn.softmax(answer).max(-1) > confidence).all():
      break
  assert 8 < t < 256 and int(state.t) == t
  np.testing.assert_array_equal(jaxsnn.readout(snn, state), jaxsnn.simulate(snn, x, t).outputs[-1])


def test_step_errors():
  apply_fn, variables, x, th = residual_setup()
  snn = jaxsnn.convert(apply_fn, variables, x, th)
  with pytest.raises(ValueError, match="state must be a jaxsnn.State"):
    jaxsnn.step(snn, {"v": 0})
  with pytest.raises(ValueError, match="per-sample shape"):
    jaxsnn.step(snn, jaxsnn.init_state(snn, x), x[:, :4])
  with pytest.raises(ValueError, match="snn must be a SpikingNetwork"):
    jaxsnn.init_state(apply_fn, x)
