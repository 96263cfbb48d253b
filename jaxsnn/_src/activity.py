"""What a simulation did: the ANN's activations beside it, firing rates (paper Fig. 5), per-site conversion error.

Conventions: a firing rate is spikes per neuron per step, positive and negative spikes both counted (the paper's
Fig. 5); the SNN value of a neuron after T steps is its net spike count times its threshold / T.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsnn._src import ir
from jaxsnn._src.convert import SpikingNetwork
from jaxsnn._src.ir import OUTPUT
from jaxsnn._src.simulate import Trace


@functools.partial(jax.jit, static_argnums=0)
def _activations(traced: ir.Traced, variables, x):
  program = ir.build_program(traced.fn, variables, x, caller="jaxsnn.site_activations")
  rec, out = ir.site_values(program, variables, x)
  rec[OUTPUT] = out
  return rec


def site_activations(apply_fn: Callable, variables: Any, x: Any) -> dict:
  """The ANN's activation at every ReLU site, and its output.

  Args:
    apply_fn: the ANN's ``apply_fn(variables, x)`` (as given to :func:`jaxsnn.convert`).
    variables: its variables.
    x: an input batch.

  Returns:
    ``{site: [batch, *site_shape]}`` (ReLU outputs) and ``"output": [batch, *output_shape]`` (the logits).

  Example:
    >>> acts = jaxsnn.analysis.site_activations(apply_fn, variables, x_train[:256])
  """
  _, traced = ir.trace(apply_fn, variables, x, caller="jaxsnn.site_activations")
  return _activations(traced, variables, x)


def firing_rates(trace: Trace, per_neuron: bool = False) -> dict:
  """Firing rate of every site: spikes per neuron per step, positive and negative both counted (paper Fig. 5).

  Args:
    trace: from :func:`jaxsnn.simulate`.
    per_neuron: return each neuron's rate (averaged over the batch) instead of the site's mean.

  Returns:
    ``{site: scalar}`` (or ``{site: [*site_shape]}``), including ``"output"`` if the output layer spikes.

  Example:
    >>> rates = jaxsnn.analysis.firing_rates(trace)    # {'Conv_0/relu': 0.21, ...}
  """
  out = {}
  for name, pos in trace.pos_spikes.items():
    spikes = (pos + trace.neg_spikes[name]).astype(jnp.float32) / trace.num_steps
    out[name] = spikes.mean(axis=0) if per_neuron else spikes.mean()
  return out


def average_firing_rate(trace: Trace, include_output: bool = False) -> jax.Array:
  """Spikes per neuron per step over all hidden neurons of the network (each neuron weighted equally).

  Args:
    trace: from :func:`jaxsnn.simulate`.
    include_output: also count a spiking output layer's neurons.

  Returns:
    A scalar.
  """
  names = [k for k in trace.pos_spikes if include_output or k != OUTPUT]
  # Summed in float: a large network's total spike count overflows int32.
  spikes = sum(jnp.sum((trace.pos_spikes[k] + trace.neg_spikes[k]).astype(jnp.float32)) for k in names)
  neurons = sum(int(np.prod(np.shape(trace.pos_spikes[k]))) for k in names)
  # A Python float: neurons x steps passes 2**31 for a ResNet-20 batch of 256 at T=64, and jax rejects such an int.
  return spikes / float(max(neurons, 1) * trace.num_steps)


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
  acts = _activations(snn.traced, snn.variables, x)
  n = np.shape(acts[OUTPUT])[0]
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
