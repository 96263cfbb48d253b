"""Per-step recording: ``simulate(..., record=[site, ...])`` and ``step(..., record=...)`` give every step's spikes
(and membrane potentials) of the named sites; they sum to the tallies, equal a hand loop over ``step``, are the same
bits in both schedules, and a run that records nothing runs the program it ran before recording existed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsnn
from conftest import dyadic_two_layer, residual_setup


def residual_snn(**kw):
  apply_fn, variables, x, th = residual_setup()
  return jaxsnn.convert(apply_fn, variables, x, th, **kw), x


@pytest.mark.parametrize("neuron,readout", [(jaxsnn.SNM(), "membrane"), (jaxsnn.SNM(), "spike"),
                                            (jaxsnn.IF(), "membrane"), (jaxsnn.SignedIF(), "spike")])
def test_recorded_spikes_sum_over_time_to_the_tallies(neuron, readout):
  snn, x = residual_snn(neuron=neuron, readout=readout, initial_potential=0.25)
  sites = list(snn.site_names) + (["output"] if readout == "spike" else [])
  steps = 20
  trace = jaxsnn.simulate(snn, x, steps, record=sites[::-1] + sites[:1])  # any order, duplicates: network order
  assert list(trace.spikes) == sites and trace.potentials is None
  negatives = 0
  for site in sites:
    s = trace.spikes[site]
    assert s.dtype == jnp.int8 and s.shape == (steps,) + trace.pos_spikes[site].shape
    assert set(np.unique(np.asarray(s))) <= {-1, 0, 1}
    np.testing.assert_array_equal((s > 0).sum(0), trace.pos_spikes[site], err_msg=site)
    np.testing.assert_array_equal((s < 0).sum(0), trace.neg_spikes[site], err_msg=site)
    negatives += int((s < 0).sum())
  assert (negatives > 0) == (neuron is not jaxsnn.IF())  # the test sees negative spikes where there are some
  assert int(sum((trace.spikes[s] != 0).sum() for s in sites)) > 0


def test_recording_some_sites_changes_no_other_result():
  snn, x = residual_snn(initial_potential=0.5)
  plain = jaxsnn.simulate(snn, x, 12)
  site = snn.site_names[2]
  rec = jaxsnn.simulate(snn, x, 12, record=site, record_potentials=True, tallies=False)  # a str: one site
  assert list(rec.spikes) == [site] and list(rec.potentials) == [site] and rec.pos_spikes is None
  np.testing.assert_array_equal(rec.outputs, plain.outputs)
  np.testing.assert_array_equal((rec.spikes[site] > 0).sum(0), plain.pos_spikes[site])
  assert plain.spikes is None and plain.potentials is None


@pytest.mark.parametrize("block", [4, 5, 12])
@pytest.mark.parametrize("neuron,readout", [(jaxsnn.SNM(), "membrane"), (jaxsnn.SignedIF(), "spike")])
def test_both_schedules_record_the_same_bits(block, neuron, readout):
  snn, x = residual_snn(neuron=neuron, readout=readout, initial_potential=0.5, readout_delay=2)
  snn = snn.replace(offsets={k: jnp.full_like(v, 0.01) for k, v in snn.offsets.items()})
  sites = list(snn.site_names) + (["output"] if readout == "spike" else [])
  step_major = jaxsnn.simulate(snn, x, 12, record=sites, record_potentials=True)
  layer_major = jaxsnn.simulate(snn, x, 12, block_size=block, record=sites, record_potentials=True)
  np.testing.assert_array_equal(layer_major.outputs, step_major.outputs)
  for site in sites:
    np.testing.assert_array_equal(layer_major.spikes[site], step_major.spikes[site], err_msg=site)
    np.testing.assert_array_equal(layer_major.potentials[site], step_major.potentials[site], err_msg=site)


def test_step_records_what_simulate_records_and_the_potential_is_the_states_v():
  snn, x = residual_snn(initial_potential=0.5)
  sites = list(snn.site_names[1:3])
  trace = jaxsnn.simulate(snn, x, 8, record=sites, record_potentials=True)
  state = jaxsnn.init_state(snn, x)
  for t in range(8):
    state, _, rec = jaxsnn.step(snn, state, record=sites[::-1], record_potentials=True)
    assert isinstance(rec, jaxsnn.Recording) and list(rec.spikes) == sites
    for site in sites:
      np.testing.assert_array_equal(rec.spikes[site], trace.spikes[site][t])
      np.testing.assert_array_equal(rec.potentials[site], trace.potentials[site][t])
      np.testing.assert_array_equal(rec.potentials[site], state.neurons[site].v)
  assert len(jaxsnn.step(snn, state)) == 2  # no record: (state, out), as before

  def body(state, _):  # a caller's own scan stacks the recordings into simulate's layout
    state, _, rec = jaxsnn.step(snn, state, record=sites)
    return state, rec

  _, recs = jax.lax.scan(body, jaxsnn.init_state(snn, x), None, length=8)
  assert recs.potentials is None
  for site in sites:
    np.testing.assert_array_equal(recs.spikes[site], trace.spikes[site])


def test_recorded_potentials_against_a_numpy_restatement():
  apply_fn, variables, x, th, current = dyadic_two_layer(1)
  snn = jaxsnn.convert(apply_fn, variables, x, th, initial_potential=0.5)
  trace = jaxsnn.simulate(snn, x, 9, record=["relu"], record_potentials=True)
  theta = np.asarray(th["relu"], np.float64)
  v, m = np.broadcast_to(0.5 * theta, current.shape).copy(), np.zeros(current.shape, np.int64)
  for t in range(9):  # float64, exact on these dyadic values
    v = v + current
    p = v >= theta
    n = (v <= -theta) & (m > 0)
    v, m = v - np.where(p, theta, np.where(n, -theta, 0.0)), m + p - n
    np.testing.assert_array_equal(np.asarray(trace.potentials["relu"][t], np.float64), v, err_msg=f"step {t + 1}")
    np.testing.assert_array_equal(trace.spikes["relu"][t], p.astype(np.int8) - n.astype(np.int8))


def scanned_outputs(fn, *args):
  """The stacked outputs of the outermost scans of ``fn``'s jaxpr (what the time loop keeps for every step)."""
  out = []

  def visit(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "scan":
        out.extend(eqn.outvars[eqn.params["num_carry"]:])
      else:
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
          visit(sub)

  visit(jax.make_jaxpr(fn)(*args).jaxpr)
  return out


@pytest.mark.parametrize("block", [None, 4])
def test_a_run_that_records_nothing_keeps_only_the_readout_per_step(block):
  snn, x = residual_snn()
  plain = scanned_outputs(lambda x: jaxsnn.simulate(snn, x, 8, block_size=block), x)
  assert len(plain) == 3  # the readout's sum, its window start and t: nothing else is stacked over time
  recorded = scanned_outputs(lambda x: jaxsnn.simulate(snn, x, 8, block_size=block, record=snn.site_names[:2],
                                                       record_potentials=True), x)
  assert len(recorded) == 3 + 4


def test_recording_errors_name_the_sites():
  snn, x = residual_snn()
  with pytest.raises(ValueError, match=r"record names \['relu_9'\], which are not sites of this network; its sites "
                     r"are \['ResidualConvNet/relu', 'ResidualConvNet/relu_1', "):
    jaxsnn.simulate(snn, x, 4, record=["relu_9"])
  with pytest.raises(ValueError, match="'output'.*not sites"):
    jaxsnn.simulate(snn, x, 4, record=["output"])  # membrane readout: the output is not a neuron site
  with pytest.raises(ValueError, match="jaxsnn.step: record names"):
    jaxsnn.step(snn, jaxsnn.init_state(snn, x), record=[3])
  with pytest.raises(ValueError, match="record_potentials=True needs the sites"):
    jaxsnn.simulate(snn, x, 4, record_potentials=True)
  with pytest.raises(ValueError, match="record must be a list of site names"):
    jaxsnn.simulate(snn, x, 4, record=7)


def test_potentials_of_a_neuron_without_a_potential_field_are_refused():
  from typing import NamedTuple

  class UState(NamedTuple):
    u: jax.Array

  def init(shape, dtype=jnp.float32, v0=None):
    return UState(jnp.zeros(shape, dtype) if v0 is None else jnp.broadcast_to(jnp.asarray(v0, dtype), shape))

  def step(threshold, state, current, fire=jaxsnn.neurons.exact_fire):
    u = state.u + current
    s = jaxsnn.neurons.amplitude(threshold, jaxsnn.neurons.gate(fire(u, threshold), threshold > 0),
                                 jnp.zeros(u.shape, bool))
    return UState(u - s), s

  apply_fn, variables, x, th, _ = dyadic_two_layer()
  snn = jaxsnn.convert(apply_fn, variables, x, th, neuron=jaxsnn.Neuron(init, step, "U"))
  assert jaxsnn.simulate(snn, x, 3, record=["relu"]).spikes["relu"].shape == (3,) + x.shape[:1] + (5,)
  with pytest.raises(ValueError, match="reads the neuron state's membrane potential v.*'U'.*\\['u'\\]"):
    jaxsnn.simulate(snn, x, 3, record=["relu"], record_potentials=True)


# ---- plots of a recorded run ----------------------------------------------------------------------------------------
def test_the_plots_draw_the_recorded_spikes_and_potentials(tmp_path):
  pytest.importorskip("matplotlib")
  from jaxsnn import plotting
  snn, x = residual_snn(neuron=jaxsnn.SignedIF())
  sites = list(snn.site_names[:2])
  trace = jaxsnn.simulate(snn, x, 16, record=sites, record_potentials=True)
  fig = plotting.plot_raster(trace.spikes, sample=1, max_neurons=10_000)
  for ax, site in zip(fig.axes, sites):
    drawn = sorted((int(t), int(row), c) for coll, c in zip(ax.collections, ("pos", "neg"))
                   for t, row in np.asarray(coll.get_offsets()))
    s = np.asarray(trace.spikes[site][:, 1]).reshape(16, -1)
    active = np.flatnonzero((s != 0).any(0))
    want = sorted((t + 1, row, "pos" if s[t, n] > 0 else "neg") for row, n in enumerate(active)
                  for t in np.flatnonzero(s[:, n]))
    assert drawn == want and len(want) > 0, site
  site = sites[0]
  fig = plotting.plot_membrane(trace.potentials[site], snn.thresholds[site], trace.spikes[site], neurons=[5])
  line = fig.axes[0].lines[0]
  np.testing.assert_array_equal(line.get_ydata(), np.asarray(trace.potentials[site][:, 0], np.float64).reshape(16, -1)[:, 5])
  rates = plotting.plot_rates_over_time(trace.spikes).axes[0].lines
  np.testing.assert_allclose(rates[1].get_ydata(), np.asarray((trace.spikes[sites[1]] != 0).mean(axis=(1, 2, 3, 4))))
  for fn, args in ((plotting.plot_raster, (trace.spikes,)), (plotting.plot_rates_over_time, (trace.spikes,)),
                   (plotting.plot_membrane, (trace.potentials[site], snn.thresholds[site], trace.spikes[site]))):
    path = tmp_path / f"{fn.__name__}.png"
    assert fn(*args, path=path) is None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(ValueError, match="sample 9 is not in the recorded batch of 5"):
    plotting.plot_raster(trace.spikes, sample=9)
  with pytest.raises(ValueError, match=r"neurons \[100000\] are not in the site's"):
    plotting.plot_membrane(trace.potentials[site], snn.thresholds[site], neurons=[100_000])
