"""What a simulation did: the ANN's activations beside it, firing rates (paper Fig. 5), per-site conversion error.

Conventions: a firing rate is spikes per neuron per step, positive and negative spikes both counted (the paper's
Fig. 5); the SNN value of a neuron after T steps is its net spike count times its threshold / T.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxsnn._src import ir
from jaxsnn._src.convert import SpikingNetwork
from jaxsnn._src.evaluate import Evaluation
from jaxsnn._src.ir import OUTPUT
from jaxsnn._src.simulate import Trace


def site_activations(apply_fn: Callable, variables: Any, x: Any) -> dict:
  """The ANN's activation at every ReLU site, and its output.

  Args:
    apply_fn: the ANN's ``apply_fn(variables, x)`` (as given to :func:`jaxsnn.convert`).
    variables: its variables.
    x: an input batch.

  Returns:
    ``{site: [batch, *site_shape]}`` (ReLU outputs) in network order, and ``"output": [batch, *output_shape]`` (the
    logits).

  Example:
    >>> acts = jaxsnn.analysis.site_activations(apply_fn, variables, x_train[:256])
  """
  apply_fn, variables = ir.split_variables(apply_fn, variables)
  program, traced = ir.trace(apply_fn, variables, x, caller="jaxsnn.site_activations")
  rec, out = ir.ann_outputs(traced, variables, x)
  return {**{s.name: rec[s.name] for s in program.sites}, OUTPUT: out}


class SpikeCounts(NamedTuple):
  """Spike counts of a run, summed over samples: what rates, SynOps and energy are made of.

  Attributes:
    pos: ``{site: float64 [*site_shape]}``: each neuron's positive spikes over steps 1..num_steps, summed over the
      samples.
    neg: same for negative spikes.
    num_samples: how many samples the sums cover.
    num_steps: the steps they cover.
  """

  pos: dict
  neg: dict
  num_samples: int
  num_steps: int


def spike_counts(trace: Trace | SpikeCounts) -> SpikeCounts:
  """The :class:`SpikeCounts` of a :class:`jaxsnn.Trace` (its batch summed); a ``SpikeCounts`` as it is.

  Args:
    trace: a trace simulated with tallies (the default), or :class:`SpikeCounts`.

  Returns:
    :class:`SpikeCounts`.

  Raises:
    ValueError: for a trace without tallies.
  """
  if isinstance(trace, SpikeCounts):
    return trace
  if trace.pos_spikes is None:
    raise ValueError("jaxsnn.analysis: this trace carries no spike tallies (simulated with tallies=False); simulate "
                     "with tallies=True (the default) for firing rates, SynOps, energy or conversion error.")
  batch = int(trace.outputs.shape[1])
  total = lambda c: np.asarray(c, np.float64).sum(axis=0)  # noqa: E731
  return SpikeCounts({k: total(v) for k, v in trace.pos_spikes.items()},
                     {k: total(v) for k, v in trace.neg_spikes.items()}, batch, trace.num_steps)


def recorded_counts(evaluation: Evaluation, num_steps: int) -> SpikeCounts:
  """The :class:`SpikeCounts` at step ``num_steps`` of ``jaxsnn.evaluate(..., record_steps=...)``'s result.

  Args:
    evaluation: a :class:`jaxsnn.Evaluation` with recorded steps.
    num_steps: one of the recorded steps.

  Returns:
    :class:`SpikeCounts` over all the evaluated examples.

  Raises:
    ValueError: if that step was not recorded.
  """
  rec = evaluation.recorded
  if rec is None or num_steps not in rec.steps:
    raise ValueError(f"jaxsnn.analysis.recorded_counts: step {num_steps} was not recorded; pass it in "
                     f"jaxsnn.evaluate(..., record_steps=...) (recorded: {list(rec.steps) if rec else []}).")
  k = list(rec.steps).index(num_steps)
  return SpikeCounts({s: np.asarray(v[k], np.float64) for s, v in rec.pos.items()},
                     {s: np.asarray(v[k], np.float64) for s, v in rec.neg.items()}, int(evaluation.count),
                     int(num_steps))


def firing_rates(trace: Trace | SpikeCounts, per_neuron: bool = False, sign: str = "both") -> dict:
  """Firing rate of every site: spikes per neuron per step, positive and negative both counted (paper Fig. 5).

  Args:
    trace: from :func:`jaxsnn.simulate`, or :class:`SpikeCounts` (e.g. :func:`recorded_counts`).
    per_neuron: return each neuron's rate (averaged over the samples) instead of the site's mean.
    sign: ``"both"`` (the paper's count), ``"pos"`` or ``"neg"`` (positive or negative spikes alone).

  Returns:
    ``{site: scalar}`` (or ``{site: [*site_shape]}``), including ``"output"`` if the output layer spikes.

  Example:
    >>> rates = jaxsnn.analysis.firing_rates(trace)    # {'Conv_0/relu': 0.21, ...}
  """
  if sign not in ("both", "pos", "neg"):
    raise ValueError(f"jaxsnn.firing_rates: sign must be 'both', 'pos' or 'neg'; got {sign!r}.")
  c = spike_counts(trace)
  out = {}
  for name in c.pos:
    spikes = (c.pos[name] if sign != "neg" else 0) + (c.neg[name] if sign != "pos" else 0)
    rate = np.asarray(spikes, np.float64) / (c.num_samples * c.num_steps)
    out[name] = rate if per_neuron else float(np.mean(rate))
  return out


def average_firing_rate(trace: Trace | SpikeCounts, include_output: bool = False) -> float:
  """Spikes per neuron per step over all hidden neurons of the network (each neuron weighted equally).

  Args:
    trace: from :func:`jaxsnn.simulate`, or :class:`SpikeCounts`.
    include_output: also count a spiking output layer's neurons.

  Returns:
    A float.
  """
  c = spike_counts(trace)
  names = [k for k in c.pos if include_output or k != OUTPUT]
  spikes = sum(float(np.sum(c.pos[k]) + np.sum(c.neg[k])) for k in names)  # float64: no int32 overflow
  neurons = sum(int(np.prod(np.shape(c.pos[k]))) for k in names)
  return spikes / float(max(neurons, 1) * c.num_samples * c.num_steps)


class SiteError(NamedTuple):
  """How far a site's rate-coded SNN activation is from the ANN's.

  Attributes:
    mean_abs: mean over samples and neurons of ``|rate * theta - a|``.
    relative: ``sum |rate * theta - a| / sum |a|`` (0 where the ANN site is all zero and so is the SNN).
    ann_mean: mean ANN activation ``a``.
    snn_mean: mean rate-coded SNN activation.
  """

  mean_abs: Any
  relative: Any
  ann_mean: Any
  snn_mean: Any


def conversion_error(snn: SpikingNetwork, x: Any, trace: Trace) -> dict:
  """Per-site conversion error: the SNN's rate-coded activation vs the ANN's, after ``trace.num_steps`` steps.

  The SNN value of a neuron is its net spike count (positive minus negative) x its threshold / T; the ANN value is the
  ReLU output on the same input. The ``"output"`` entry compares the readout after T steps with the ANN's logits.
  Large errors early in the network propagate; the first site whose error jumps is where a deep network loses
  accuracy.

  Args:
    snn: the simulated network.
    x: the input batch the trace was simulated on.
    trace: ``jaxsnn.simulate(snn, x, T)``.

  Returns:
    ``{site: SiteError}`` for every site in network order, then ``"output"``.

  Raises:
    ValueError: if the trace's batch does not match ``x``.

  Example:
    >>> err = jaxsnn.analysis.conversion_error(snn, x, jaxsnn.simulate(snn, x, 64))
    >>> {k: float(e.relative) for k, e in err.items()}
  """
  if trace.pos_spikes is None:
    raise ValueError("jaxsnn.conversion_error: the trace carries no spike tallies; simulate with tallies=True.")
  rec, out = ir.ann_outputs(snn.traced, snn.variables, x)
  acts = {**rec, OUTPUT: out}
  n = np.shape(out)[0]
  if trace.outputs.shape[1] != n:
    raise ValueError(f"jaxsnn.conversion_error: the trace has batch {trace.outputs.shape[1]} but x has {n}; pass "
                     "the input the trace was simulated on.")
  pairs = {}
  for name in snn.site_names:
    net = (trace.pos_spikes[name] - trace.neg_spikes[name]).astype(jnp.float32)
    pairs[name] = (net * snn.thresholds[name] / trace.num_steps, acts[name])
  pairs[OUTPUT] = (trace.outputs[-1], acts[OUTPUT])
  out = {}
  for name, (snn_val, ann_val) in pairs.items():
    err = jnp.abs(snn_val - ann_val)
    denom = jnp.sum(jnp.abs(ann_val))
    rel = jnp.where(denom > 0, jnp.sum(err) / jnp.where(denom > 0, denom, 1), jnp.where(jnp.sum(err) > 0, jnp.inf, 0))
    out[name] = SiteError(mean_abs=err.mean(), relative=rel, ann_mean=ann_val.mean(), snn_mean=snn_val.mean())
  return out
