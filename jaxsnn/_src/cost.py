"""What a conversion costs: fan-out, SynOps, the ANN's MACs and the paper's Eq. 15 energy ratio.

Conventions:

* fan-out of a neuron: the number of synaptic connections from it to the neurons of the next sites (and the output
  layer), read off the network's own affine ops (see :func:`fan_out`);
* SynOps: spikes x fan-out (accumulates, ACs); ANN MACs: the connections of each convolution and dense layer, each
  used once per inference (see :func:`ann_macs`).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsnn._src import ir, rules
from jaxsnn._src.activity import SpikeCounts, spike_counts
from jaxsnn._src.convert import SpikingNetwork
from jaxsnn._src.simulate import Trace
from jaxsnn._src.jitting import jit

E_MAC_PJ = 4.6  # energy of a 32-bit float multiply-accumulate (Horowitz 2014), the paper's alpha in Eq. 15
"""Energy of a 32-bit float multiply-accumulate in pJ (Horowitz 2014): the paper's alpha in Eq. 15."""
E_AC_PJ = 0.9  # energy of a 32-bit float accumulate, the paper's beta in Eq. 15
"""Energy of a 32-bit float accumulate in pJ (Horowitz 2014): the paper's beta in Eq. 15."""
INPUT = "input"  # fan_out key of the network's input


def _structural(program: ir.Program, op: ir.Op, args, caller: str, keep_scalars: bool = False):
  """``op`` as a 0/1 connection map (see :func:`jaxsnn._src.rules.structural`); data = input- or spike-dependent."""
  data = [program.kind(a) != ir.CONST for a in op.ins]
  scalar_literal = [isinstance(a, ir.Lit) and np.ndim(a.val) == 0 for a in op.ins]
  try:
    return rules.structural(op, args, data, scalar_literal, keep_scalars)
  except ValueError as e:
    raise ValueError(f"{caller}: {e} at {op.where}; the path from the input to the first neurons must be affine to "
                     "count its connections.") from None


POOLING = ("fold", "average")


def _check_pooling(pooling, caller):
  if pooling not in POOLING:
    raise ValueError(f"{caller}: pooling must be one of {POOLING}; got {pooling!r}.")


def fan_out(snn: SpikingNetwork, pooling: str = "fold") -> dict:
  """The fan-out of every neuron: how many synaptic connections it has to the next layer(s) of neurons.

  Derived from the network's own ops: every data-dependent affine op is re-run with its weights replaced by their
  non-zero pattern and its biases dropped, which turns the map from one site's spikes to the next sites' (and the
  output layer's) input currents into a 0/1-weighted linear map; its transpose applied to ones (one ``jax.grad``)
  gives each neuron's number of connections, paths through intermediate ops counted separately. So a 3x3 SAME conv
  with C_out channels gives 9 * C_out inside and fewer at the padded edges (and with stride, fewer still), a dense
  layer gives its number of non-zero outgoing weights, a 2x2 average pool followed by a conv gives the conv's fan-out
  of the pooled position, and a residual identity adds one. A max pool counts as the sum over its windows (an upper
  bound on the events the cumulative-max rule passes on).

  Args:
    snn: a converted network.
    pooling: how average pooling (and means) between two layers count. ``"fold"``: the pool is folded into the next
      layer's synapses, so each spike reaches every neuron its pooled value feeds (the event-driven count: no two
      spikes are merged). ``"average"``: the pool's 1/k is kept (every product or quotient with a scalar literal
      keeps its magnitude), so a spike through a 2x2 average pool counts a quarter of the next layer's fan-out;
      summed over spikes this is "firing rate x the next layer's MACs on the pooled map", the usual estimate in the
      literature (e.g. Rathi & Roy's FR_l x FLOPs_l).

  Returns:
    ``{site: float array [*site_shape]}`` and ``"input"``: the same for the network input (its analog values feed
    the first layer: these are the first layer's MACs), a pytree like the input without the batch axis.

  Raises:
    ValueError: if the ops between the input and the first sites are not affine, or for an unknown ``pooling``.

  Example:
    >>> fo = jaxsnn.analysis.fan_out(snn)     # {'input': [32, 32, 3], 'Conv_0/relu': [32, 32, 64], ...}
  """
  _check_pooling(pooling, "jaxsnn.fan_out")
  return _fan_out(snn, pooling)


def _unit_input(snn: SpikingNetwork):
  """A batch of one input of the converted shapes (float, so that gradients flow)."""
  treedef, spec = snn.input_spec
  return jax.tree_util.tree_unflatten(
      treedef, [jnp.zeros((1,) + s, d if jnp.issubdtype(d, jnp.floating) else jnp.float32) for s, d in spec])


@functools.partial(jit, static_argnums=(1,))
def _fan_out(snn: SpikingNetwork, pooling: str) -> dict:
  caller = "jaxsnn.fan_out"
  treedef, _ = snn.input_spec
  x1 = _unit_input(snn)
  program = ir.build_program(snn.apply_fn, snn.variables, x1, caller=caller)
  sources = {INPUT: jax.tree_util.tree_leaves(x1)}
  sources.update({s.name: jnp.zeros(program.avals[s.x].shape, program.avals[s.x].dtype) for s in program.sites})

  def connections(sources):
    env = dict(zip(program.var_ids, jax.tree_util.tree_leaves(snn.variables)))
    env.update(program.consts)
    env.update(zip(program.input_ids, sources[INPUT]))
    ends = []

    def site_rule(site, args):
      ends.append(jnp.sum(args[0]))  # the site's input current is an end point ...
      return sources[site.name]  # ... and its spikes a new source

    ir.walk(program, env, op_rule=lambda op, args: _structural(program, op, args, caller, pooling == "average"),
            site_rule=site_rule, max_rule=lambda m, args: _structural(program, m.op, args, caller)[0])
    ends.append(jnp.sum(ir.read(env, program.out)))
    return sum(ends)

  grads = jax.grad(connections)(sources)
  out = {k: v[0] for k, v in grads.items() if k != INPUT}
  out[INPUT] = jax.tree_util.tree_unflatten(treedef, [g[0] for g in grads[INPUT]])
  return out


def synops(snn: SpikingNetwork, trace: Trace | SpikeCounts, per_step: bool = True, pooling: str = "fold") -> dict:
  """Synaptic operations (accumulates) caused by each site's spikes: each spike x its neuron's fan-out.

  Args:
    snn: the simulated network.
    trace: its :class:`jaxsnn.Trace`, or :class:`jaxsnn.analysis.SpikeCounts` (e.g. of a whole test set).
    per_step: divide by the number of steps (SynOps per step); else the total over the run.
    pooling: ``"fold"`` or ``"average"``, see :func:`fan_out`.

  Returns:
    ``{site: scalar}``: per sample (averaged over the batch). A spiking output layer has no fan-out and is left out.

  Example:
    >>> ops = jaxsnn.analysis.synops(snn, trace)   # {'Conv_0/relu': 1.2e5, ...} per sample per step
  """
  _check_pooling(pooling, "jaxsnn.synops")
  fo = fan_out(snn, pooling)
  c = spike_counts(trace)
  out = {}
  for name in snn.site_names:
    total = float(np.sum((c.pos[name] + c.neg[name]) * np.asarray(fo[name], np.float64))) / c.num_samples
    out[name] = total / c.num_steps if per_step else total
  return out


class MACs(NamedTuple):
  """Multiply-accumulates of one ANN inference (per sample), per weighted layer.

  Attributes:
    per_layer: ``{name: count}`` for every convolution and dense layer (``dot_general``) that acts on data, in
      network order; a layer's count is its number of non-zero-weight connections (so zero padding is not counted).
      Names are ``"<module path>/<primitive>"``.
    first_layer: the part of the total on the input alone (before the first neuron site): the SNN computes these
      with multiplications, once per input.
    total: all of them.
  """

  per_layer: dict
  first_layer: Any
  total: Any


def ann_macs(snn: SpikingNetwork) -> MACs:
  """Counts the ANN's multiply-accumulates per convolution / dense layer (per sample), from the ops themselves.

  Each weighted op is run once on ones with its weights replaced by their non-zero pattern: the sum of its output is
  its number of connections (a 3x3 SAME conv on H x W x C_in -> C_out counts 9 * C_in * C_out per interior output
  position and fewer at the padded edges; a dense layer counts its non-zero weights). Pooling, BatchNorm scaling and
  biases are not counted (they are not MACs of the weighted layers, as in the paper's Eq. 15).

  Args:
    snn: a converted network.

  Returns:
    :class:`MACs`.

  Example:
    >>> jaxsnn.analysis.ann_macs(snn).total
  """
  per_layer, first = _ann_macs(snn)
  return MACs(per_layer=per_layer, first_layer=sum(first.values(), jnp.zeros(())),
              total=sum(per_layer.values(), jnp.zeros(())))


@jit
def _ann_macs(snn: SpikingNetwork):
  caller = "jaxsnn.ann_macs"
  x1 = _unit_input(snn)
  program = ir.build_program(snn.apply_fn, snn.variables, x1, caller=caller)
  env = ir.initial_env(program, snn.variables, x1)
  ir.walk(program, env, kinds=frozenset({ir.CONST}))
  per_layer, first, used = {}, {}, set()
  for op in program.ops:
    if not isinstance(op, ir.Op) or not rules.is_contraction(op.prim):
      continue
    data = [program.kind(a) != ir.CONST for a in op.ins]
    if not any(data):
      continue
    args = [jnp.ones(program.avals[a].shape, program.avals[a].dtype) if d else ir.read(env, a)
            for a, d in zip(op.ins, data)]
    (count,) = _structural(program, op, args, caller)
    name, k = f"{op.scope or 'top'}/{op.prim.name}", 1
    while name in used:
      name, k = f"{op.scope or 'top'}/{op.prim.name}_{k}", k + 1
    used.add(name)
    per_layer[name] = jnp.sum(count.astype(jnp.float32))
    if all(program.kind(a) != ir.SPIKE for a in op.ins):
      first[name] = per_layer[name]
  return per_layer, first


class Energy(NamedTuple):
  """Eq. 15: energy of one inference, SNN vs ANN (per sample).

  Attributes:
    ann_macs: MACs of one ANN inference (:func:`ann_macs`).
    first_layer_macs: MACs of the first layer (on the analog input), the SNN's only multiplications.
    synops: SNN accumulates over the whole run (spikes x fan-out, all sites).
    snn_pj: SNN energy in pJ: ``first_layer_macs * e_mac (* T if first_layer_every_step) + synops * e_ac``.
    ann_pj: ANN energy in pJ: ``ann_macs * e_mac``.
    ratio: ``snn_pj / ann_pj``.
  """

  ann_macs: Any
  first_layer_macs: Any
  synops: Any
  snn_pj: Any
  ann_pj: Any
  ratio: Any


def energy(snn: SpikingNetwork, trace: Trace | SpikeCounts, e_mac: float = E_MAC_PJ, e_ac: float = E_AC_PJ,
           first_layer_every_step: bool = False, pooling: str = "fold") -> Energy:
  """The paper's Eq. 15 energy estimate: SNN / ANN, first layer as MACs, every other layer as ACs (SynOps).

  ``E_SNN / E_ANN = (MACs_first * e_mac + SynOps * e_ac) / (MACs * e_mac)``, per sample: the ANN's MACs from
  :func:`ann_macs`, the SNN's accumulates from :func:`synops` over the whole run. With ``pooling="fold"`` an
  average pool between two sites is folded into the next layer's synapses on the SNN side (a spike reaches every
  neuron its pooled value feeds) while the ANN pools first and then multiplies, so each pool costs the SNN up to k
  times the ANN's connections; ``pooling="average"`` gives the literature's firing rate x MACs estimate.

  Args:
    snn: the simulated network.
    trace: its :class:`jaxsnn.Trace` (the SynOps are averaged over its batch) or
      :class:`jaxsnn.analysis.SpikeCounts` (averaged over their samples).
    e_mac: pJ per multiply-accumulate (the paper's alpha, 4.6 pJ).
    e_ac: pJ per accumulate (the paper's beta, 0.9 pJ).
    first_layer_every_step: count the first layer's MACs at every step. jaxsnn computes the constant input current
      once per input (direct coding), so by default they are counted once.
    pooling: ``"fold"`` or ``"average"``, see :func:`fan_out`.

  Returns:
    :class:`Energy`.

  Example:
    >>> e = jaxsnn.analysis.energy(snn, trace)
    >>> print(f"SNN uses {float(e.ratio):.1%} of the ANN's energy")
  """
  _check_pooling(pooling, "jaxsnn.energy")
  macs = ann_macs(snn)
  counts = spike_counts(trace)
  ops = sum(synops(snn, counts, per_step=False, pooling=pooling).values())
  snn_pj = macs.first_layer * e_mac * (counts.num_steps if first_layer_every_step else 1) + ops * e_ac
  ann_pj = macs.total * e_mac
  return Energy(ann_macs=macs.total, first_layer_macs=macs.first_layer, synops=ops, snn_pj=snn_pj, ann_pj=ann_pj,
                ratio=snn_pj / ann_pj)
