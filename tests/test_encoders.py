"""Input encoders (``jaxsnn.encoders``): what their frames are, that ``simulate(..., encoder=...)`` is a loop over
``step`` with those frames in both schedules, that direct coding is the constant-input program, and that rate coding
converges to the direct-input answers as T grows."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsnn
from conftest import count_compiles, init_params, residual_setup
from jaxsnn import encoders

KEY = jax.random.PRNGKey(0)


def residual_snn():
  apply_fn, variables, x, th = residual_setup()
  return jaxsnn.convert(apply_fn, variables, x, th, initial_potential=0.5), x


def codes():
  return {"poisson": encoders.poisson(KEY, -2.0, 2.0), "phase": encoders.phase(4, -2.0, 2.0)}


# ---- the frames ---------------------------------------------------------------------------------------------------
def test_poisson_frames_are_low_or_high_with_the_value_as_probability():
  x = jnp.asarray(np.random.default_rng(0).uniform(-0.5, 1.5, (4, 64)), jnp.float32)
  enc = encoders.poisson(KEY)  # the range [0, 1]: values outside it are clipped
  frames = jax.vmap(lambda t: enc(x, t))(jnp.arange(4000))
  assert frames.dtype == x.dtype and set(np.unique(np.asarray(frames))) <= {0.0, 1.0}
  mean = np.asarray(frames.mean(0))
  p = np.clip(np.asarray(x), 0, 1)
  assert np.abs(mean - p).max() < 5 * np.sqrt(0.25 / 4000)  # 5 standard deviations of a Bernoulli mean
  assert (mean[np.asarray(x) <= 0] == 0).all() and (mean[np.asarray(x) >= 1] == 1).all()
  # A per-channel range: the mean frame is x itself inside it.
  low, high = jnp.array([-1.0, 0.0]), jnp.array([1.0, 3.0])
  xs = jnp.asarray(np.random.default_rng(1).uniform(0, 1, (8, 2)) * (high - low) + low, jnp.float32)
  f = jax.vmap(lambda t: encoders.poisson(KEY, low, high)(xs, t))(jnp.arange(4000))
  assert ((f == low) | (f == high)).all()
  assert np.abs(np.asarray(f.mean(0) - xs)).max() < 5 * np.sqrt(0.25 / 4000) * 3


@pytest.mark.parametrize("key", [KEY, jax.random.key(0)], ids=["raw", "typed"])
def test_poisson_is_deterministic_given_the_key(key):
  x = jax.random.uniform(jax.random.PRNGKey(3), (3, 10))
  a, b = encoders.poisson(key)(x, 5), encoders.poisson(key)(x, 5)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, encoders.poisson(key)(x, 6))
  assert not np.array_equal(a, encoders.poisson(jax.random.fold_in(key, 1))(x, 5))
  snn, x = residual_snn()
  enc = encoders.poisson(key, -2.0, 2.0)
  np.testing.assert_array_equal(jaxsnn.simulate(snn, x, 5, encoder=enc).outputs,
                                jaxsnn.simulate(snn, x, 5, encoder=encoders.poisson(key, -2.0, 2.0)).outputs)


def test_encoder_errors():
  snn, x = residual_snn()
  with pytest.raises(ValueError, match="jaxsnn.encoders.poisson: key must be a jax.random key"):
    encoders.poisson(0)
  with pytest.raises(ValueError, match="jaxsnn.encoders.poisson: high must be greater than low.*low=1.0, high=0.5"):
    encoders.poisson(KEY, 1.0, 0.5)
  with pytest.raises(ValueError, match="jaxsnn.encoders.phase: bits must be an int in 1..24"):
    encoders.phase(0)
  with pytest.raises(ValueError, match="jaxsnn.simulate: encoder must be a jaxsnn.encoders.Encoder.*function"):
    jaxsnn.simulate(snn, x, 4, encoder=lambda x, t: x)


def test_phase_frames_average_to_the_quantised_value_every_period():
  bits = 4
  u = np.arange(16) / 15  # every 4-bit level
  x = jnp.asarray(np.stack([u, u[::-1]]) * 3 - 1, jnp.float32)  # the range [-1, 2]
  enc = encoders.phase(bits, -1.0, 2.0)
  frames = np.asarray(jax.vmap(lambda t: enc(x, t))(jnp.arange(3 * bits)), np.float64)
  for start in range(0, 3 * bits, bits):
    np.testing.assert_allclose(frames[start:start + bits].mean(0), np.asarray(x, np.float64), atol=1e-6)
  # One bit per step, most significant first, with its binary weight: level 10 = 0b1010.
  level10 = frames[:bits, 0, 10]
  weights = bits * 2.0 ** np.arange(bits - 1, -1, -1) / 15
  np.testing.assert_allclose(level10, -1 + 3 * weights * np.array([1, 0, 1, 0]), atol=1e-6)


def test_direct_is_the_constant_input_program_bit_for_bit():
  snn, x = residual_snn()
  plain = jaxsnn.simulate(snn, x, 10)
  assert encoders.direct().constant and not encoders.phase().constant
  np.testing.assert_array_equal(encoders.direct()(x, 3), x)
  with count_compiles() as compiles:
    direct = jaxsnn.simulate(snn, x, 10, encoder=encoders.direct())
  assert compiles == []  # the same program as without an encoder, from the cache
  np.testing.assert_array_equal(direct.outputs, plain.outputs)


# ---- simulate and step --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["poisson", "phase"])
def test_simulate_is_a_loop_over_step_with_the_frames_in_both_schedules(name):
  snn, x = residual_snn()
  enc = codes()[name]
  sites = list(snn.site_names)
  steps = 11
  step_major = jaxsnn.simulate(snn, x, steps, encoder=enc, record=sites)

  def body(state, _):
    state, _, rec = jaxsnn.step(snn, state, enc(x, state.t), record=sites)
    return state, (jaxsnn.readout(snn, state), rec.spikes)

  state, (answers, spikes) = jax.lax.scan(body, jaxsnn.init_state(snn, x), None, length=steps)
  np.testing.assert_array_equal(answers, step_major.outputs)
  for site in sites:
    np.testing.assert_array_equal(spikes[site], step_major.spikes[site])
    np.testing.assert_array_equal(state.tallies.pos[site], step_major.pos_spikes[site])
  for block in (4, 11):
    layer_major = jaxsnn.simulate(snn, x, steps, block_size=block, encoder=enc, record=sites)
    np.testing.assert_array_equal(layer_major.outputs, step_major.outputs, err_msg=f"block {block}")
    for site in sites:
      np.testing.assert_array_equal(layer_major.spikes[site], step_major.spikes[site], err_msg=f"{site}, {block}")
  # The input changes every step: the answers differ from direct coding's.
  assert not np.array_equal(step_major.outputs, jaxsnn.simulate(snn, x, steps).outputs)


def test_a_new_key_or_range_never_recompiles():
  snn, x = residual_snn()
  a = jaxsnn.simulate(snn, x, 6, encoder=encoders.poisson(KEY, -2.0, 2.0))
  with count_compiles() as compiles:
    b = jaxsnn.simulate(snn, x, 6, encoder=encoders.poisson(jax.random.PRNGKey(7), -2.0, 2.0))
    c = jaxsnn.simulate(snn, x, 6, encoder=encoders.poisson(KEY, -3.0, 3.0))
  assert compiles == []
  assert not np.array_equal(a.outputs, b.outputs) and not np.array_equal(a.outputs, c.outputs)
  np.testing.assert_array_equal(a.outputs, jaxsnn.simulate(snn, x, 6, encoder=encoders.poisson(KEY, -2.0, 2.0)).outputs)


def test_a_non_finite_input_reads_out_nan_whatever_the_code():
  snn, x = residual_snn()
  x = x.at[1, 0, 0, 0].set(jnp.nan)
  for enc in codes().values():
    out = jaxsnn.simulate(snn, x, 4, encoder=enc).outputs
    assert np.isnan(out[:, 1]).all() and np.isfinite(np.delete(np.asarray(out), 1, axis=1)).all()


# ---- convergence --------------------------------------------------------------------------------------------------
class MLP(nn.Module):
  """Dense(32) - ReLU - Dense(32) - ReLU - Dense(4), on 16 inputs in [0, 1]."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(32)(x))
    return nn.Dense(4)(nn.relu(nn.Dense(32)(x)))


def test_rate_coding_converges_to_the_direct_input_answers_as_t_grows():
  model = MLP()
  x = jax.random.uniform(jax.random.PRNGKey(0), (1024, 16))
  variables = init_params(model, x, 0)
  labels = model.apply(variables, x).argmax(-1)  # the ANN's own answers
  snn, _ = jaxsnn.recipes.paper(model.apply, variables, [x])
  steps = 1024
  direct_trace = jaxsnn.simulate(snn, x, steps, tallies=False)
  rate_trace = jaxsnn.simulate(snn, x, steps, encoder=encoders.poisson(KEY), tallies=False)
  acc_direct, acc_rate = jaxsnn.accuracy_vs_time(direct_trace, labels), jaxsnn.accuracy_vs_time(rate_trace, labels)
  direct, rate = direct_trace.outputs, rate_trace.outputs
  error = {t: float(jnp.abs(rate[t - 1] - direct[t - 1]).mean()) for t in (16, 64, 256, 1024)}
  gap = {t: float(acc_direct[t - 1] - acc_rate[t - 1]) for t in (16, 128, 1024)}
  # The readouts' distance falls about as 1/sqrt(T) (Bernoulli noise): a factor 4 from T=16 to T=256 (measured 3.9).
  assert error[16] > error[64] > error[256] > error[1024] and error[16] / error[256] > 3, error
  # The accuracy gap to direct input closes (measured 0.117, 0.061, 0.020).
  assert gap[16] > gap[128] > gap[1024] and gap[16] > 0.08 and abs(gap[1024]) <= 0.03, gap
  assert float(acc_direct[-1]) > 0.99
