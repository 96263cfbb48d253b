"""Analysis of a conversion: information loss (Eq. 12-13, Fig. 3), firing rates (Fig. 5), SynOps and energy (Eq. 15),
and per-site conversion error.

Everything here is a pure function of arrays: :func:`information_loss` and :func:`information_loss_surface` are
jit-able and differentiable (``jax.grad`` w.r.t. alpha and the thresholds); the activity and cost functions read a
:class:`jaxsnn.Trace`.

Conventions:

* firing rate: spikes per neuron per step, positive and negative spikes both counted (the paper's Fig. 5);
* fan-out of a neuron: the number of synaptic connections from it to the neurons of the next sites (and the output
  layer), read off the network's own affine ops (see :func:`fan_out`);
* SynOps: spikes x fan-out (accumulates, ACs); ANN MACs: the connections of each convolution and dense layer, each
  used once per inference (see :func:`ann_macs`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsnn._src import ir
from jaxsnn._src.calibrate import _normalize, _site_values
from jaxsnn._src.convert import OUTPUT, SpikingNetwork
from jaxsnn._src.simulate import Trace

E_MAC_PJ = 4.6  # energy of a 32-bit float multiply-accumulate (Horowitz 2014), the paper's alpha in Eq. 15
E_AC_PJ = 0.9  # energy of a 32-bit float accumulate, the paper's beta in Eq. 15
INPUT = "input"  # fan_out key of the network's input
REDUCTIONS = ("sum", "mean", "none")


# ----------------------------------------------------------------------------------------------------------------
# ANN activations.
# ----------------------------------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnums=(0,))
def _activations(apply_fn, variables, x):
  rec, out = _site_values(apply_fn, variables, x, "jaxsnn.site_activations")
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
  return _activations(apply_fn, variables, x)


# ----------------------------------------------------------------------------------------------------------------
# Information loss (paper Eq. 12-13, Fig. 3).
# ----------------------------------------------------------------------------------------------------------------

def information_loss(activations, threshold, num_steps, alpha=1.0, reduction: str = "sum",
                     temperature: float = 0.0) -> jax.Array:
  """Information lost at one site when ReLU activations are rate-coded with threshold ``alpha * threshold`` in T steps.

  With threshold ``l = alpha * lambda`` and T steps, a neuron can send at most T spikes of amplitude ``l``, so it
  represents values in ``[l / T, l]``: an activation below ``l / T`` cannot make a single spike and is lost entirely,
  and the part of an activation above ``l`` is clipped (paper Eq. 12; with per-neuron ``lambda``, Eq. 13)::

      loss = sum_i  a_i * [a_i < l_i / T]  +  max(a_i - l_i, 0)

  Pure and jit-able. It is piecewise linear in ``alpha`` and ``threshold``, so ``jax.grad`` gives the exact
  derivative everywhere except at the kinks ``a_i = l_i / T`` and ``a_i = l_i`` (a set of measure zero): the clipping
  term contributes ``-sum_{a_i > l_i} lambda_i`` to d/d alpha, the loss-below term is locally constant.

  Args:
    activations: ANN activations (``>= 0``) of the site, e.g. ``[batch, *site_shape]``.
    threshold: ``lambda``, broadcastable to ``activations`` from the right: a scalar (LayerNorm) or the site's shape
      (NeuronNorm / channel norm).
    num_steps: T (an int, or a float array for grids).
    alpha: scale of the threshold (the paper's alpha).
    reduction: ``"sum"`` (the paper's sum over neurons and inputs), ``"mean"``, or ``"none"`` (per element).
    temperature: 0 for the exact loss. A positive value replaces the step ``[a_i < l_i / T]`` by the sigmoid
      ``sigmoid((l_i / T - a_i) / (temperature * l_i / T))``, a relaxation whose gradient also sees the loss below
      ``l / T`` (useful to optimise alpha or thresholds by gradient descent); it tends to the exact loss as the
      temperature goes to 0.

  Returns:
    The loss (a scalar unless ``reduction="none"``).

  Raises:
    ValueError: for an unknown reduction.

  Example:
    >>> loss = information_loss(acts[site], stats.max[site], 32, alpha=0.5)
    >>> dloss_dalpha = jax.grad(information_loss, argnums=3)(acts[site], stats.max[site], 32, 0.5)
  """
  if reduction not in REDUCTIONS:
    raise ValueError(f"jaxsnn.information_loss: reduction must be one of {REDUCTIONS}; got {reduction!r}.")
  if not temperature >= 0:
    raise ValueError(f"jaxsnn.information_loss: temperature must be >= 0; got {temperature!r}.")
  a = jnp.asarray(activations)
  level = alpha * jnp.asarray(threshold)
  if temperature:
    step = level / num_steps
    below = jax.nn.sigmoid((step - a) / jnp.maximum(temperature * step, jnp.finfo(a.dtype).tiny))
    lost_below = a * below
  else:
    lost_below = jnp.where(a < level / num_steps, a, jnp.zeros_like(a))
  clipped = jnp.maximum(a - level, 0)
  loss = lost_below + clipped
  if reduction == "sum":
    return loss.sum()
  if reduction == "mean":
    return loss.mean()
  return loss


def information_loss_surface(activations, neuron_max, alphas, steps, norms: Sequence[str] = ("layer", "neuron"),
                             reduction: str = "sum") -> dict:
  """The paper's Fig. 3: information loss of one site over a grid of (alpha, T), per normalization.

  Thresholds come from the per-neuron maxima ``neuron_max`` (``Stats.max[site]``, from training data) under each
  norm (``"layer"``: the site's max for every neuron; ``"channel"``; ``"neuron"``: each neuron's own max); the loss is
  :func:`information_loss` of ``activations`` (the site's activations over a set of inputs). Jit-able; evaluates the
  grid one point at a time (``lax.map``), so memory stays at one activation tensor.

  Args:
    activations: ``[batch, *site_shape]`` activations of the site.
    neuron_max: ``[*site_shape]`` per-neuron maxima.
    alphas: 1-D array of alpha values.
    steps: 1-D array of T values.
    norms: which norms to compute (``"layer"``, ``"channel"``, ``"neuron"``).
    reduction: as in :func:`information_loss`, but not ``"none"``.

  Returns:
    ``{norm: [len(alphas), len(steps)]}``.

  Raises:
    ValueError: for an unknown norm or reduction.

  Example:
    >>> surf = information_loss_surface(acts[site], stats.max[site], jnp.linspace(0.1, 1, 10), jnp.arange(1, 65))
  """
  caller = "jaxsnn.information_loss_surface"
  for norm in norms:
    if norm not in ("layer", "channel", "neuron"):
      raise ValueError(f"{caller}: unknown norm {norm!r}; use 'layer', 'channel' or 'neuron'.")
  if reduction not in ("sum", "mean"):
    raise ValueError(f"{caller}: reduction must be 'sum' or 'mean'; got {reduction!r}.")
  alphas = jnp.asarray(alphas, jnp.float32)
  steps = jnp.asarray(steps, jnp.float32)
  if alphas.ndim != 1 or steps.ndim != 1:
    raise ValueError(f"{caller}: alphas and steps must be 1-D; got shapes {alphas.shape} and {steps.shape}.")
  if np.shape(neuron_max) != np.shape(activations)[1:]:
    raise ValueError(f"{caller}: neuron_max has shape {np.shape(neuron_max)} but activations are "
                     f"{np.shape(activations)} ([batch, *site_shape]).")
  grid_a, grid_t = jnp.meshgrid(alphas, steps, indexing="ij")
  out = {}
  for norm in norms:
    th = _normalize(neuron_max, norm)
    flat = jax.lax.map(lambda at: information_loss(activations, th, at[1], at[0], reduction),
                       jnp.stack([grid_a.ravel(), grid_t.ravel()], axis=1))
    out[norm] = flat.reshape(grid_a.shape)
  return out


def plot_information_loss(surface: Mapping[str, Any], alphas, steps, path: str | os.PathLike,
                          title: str | None = None, view: tuple[float, float] = (25.0, 45.0)) -> None:
  """Plots :func:`information_loss_surface` as the paper's Fig. 3 (log10 loss over alpha and T) to a PNG file.

  One 3-D surface per norm, side by side, on a shared z axis. Needs matplotlib (``pip install jaxsnn[plot]``).

  Args:
    surface: ``{norm: [len(alphas), len(steps)]}``.
    alphas: the alpha grid.
    steps: the T grid.
    path: where to write the PNG.
    title: optional figure title.
    view: ``(elevation, azimuth)`` of the 3-D view in degrees (the default looks into the low-loss valley).

  Raises:
    ImportError: if matplotlib is missing.
  """
  try:
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
  except ImportError as e:  # pragma: no cover
    raise ImportError("jaxsnn.plot_information_loss: needs matplotlib (pip install 'jaxsnn[plot]').") from e
  alphas, steps = np.asarray(alphas, np.float64), np.asarray(steps, np.float64)
  logs = {}
  for norm, loss in surface.items():
    loss = np.asarray(loss, np.float64)
    positive = loss[loss > 0]
    floor = positive.min() / 10 if positive.size else 1e-12
    logs[norm] = np.log10(np.maximum(loss, floor))
  zmin = min(v.min() for v in logs.values())
  zmax = max(v.max() for v in logs.values())
  names = {"layer": "LayerNorm", "channel": "ChannelNorm", "neuron": "NeuronNorm"}
  fig = plt.figure(figsize=(5.5 * len(logs), 4.8))
  grid_t, grid_a = np.meshgrid(steps, alphas)
  for i, (norm, z) in enumerate(logs.items()):
    ax = fig.add_subplot(1, len(logs), i + 1, projection="3d")
    ax.plot_surface(grid_a, grid_t, z, cmap="viridis", vmin=zmin, vmax=zmax, linewidth=0, antialiased=True)
    ax.set_xlabel("alpha")
    ax.set_ylabel("T")
    ax.set_zlabel("log10 loss")
    ax.set_zlim(zmin, zmax)
    ax.view_init(*view)
    ax.set_title(names.get(norm, norm))
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------
# Activity.
# ----------------------------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------------------------
# Fan-out, SynOps, energy.
# ----------------------------------------------------------------------------------------------------------------

_MAX_LIKE = ("max", "reduce_max", "reduce_window_max")


def _structural_max(op: ir.Op, args):
  """The connectivity of a max: each input connects to the outputs whose window holds it (a sum with the same
  windows). It bounds the events the cumulative-max rule can pass on."""
  name, p = op.prim.name, op.params
  if name == "max":
    return args[0] + args[1]
  if name == "reduce_max":
    return jnp.sum(args[0], axis=tuple(p["axes"]))
  return jax.lax.reduce_window(args[0], np.zeros((), args[0].dtype), jax.lax.add, p["window_dimensions"],
                               p["window_strides"], p["padding"], p["base_dilation"], p["window_dilation"])


def _is_scalar_literal(program: ir.Program, atom) -> bool:
  return isinstance(atom, ir.Lit) and np.ndim(atom.val) == 0


def _structural_op(program: ir.Program, op: ir.Op, args, caller: str, keep_scalars: bool = False):
  """Runs ``op`` with every weight replaced by 1 where it is non-zero (0 elsewhere) and every bias by 0.

  Applied to the data-dependent ops (of the input and the spikes), this turns the network's affine map between two
  layers of neurons into a non-negative linear map whose entries count the connections (paths) between them. With
  ``keep_scalars``, multiplications and divisions by a scalar literal (the 1/k of an average pool or a mean) keep
  their magnitude instead.
  """
  data = [program.kind(a) != ir.CONST for a in op.ins]
  name = op.prim.name
  if not any(data):
    return op.bind(*args)
  if name in _MAX_LIKE:
    if not all(data):
      raise ValueError(f"{caller}: '{name}' at {op.where} mixes data and constants; no connectivity to count.")
    return (_structural_max(op, args),)
  kind_of = lambda a: ir.SPIKE if program.kind(a) != ir.CONST else ir.CONST  # noqa: E731
  why = ir._check_affine(op, kind_of)  # noqa: SLF001  (the same rule table the converter uses)
  if why is not None:
    raise ValueError(f"{caller}: primitive '{name}' at {op.where} {why}; the path from the input to the first "
                     "neurons must be affine to count its connections.")
  zero = lambda v: jnp.zeros_like(jnp.asarray(v))  # noqa: E731
  if keep_scalars and name in ("mul", "div") and data[0] and not data[1] and _is_scalar_literal(program, op.ins[1]):
    return op.bind(args[0], jnp.abs(jnp.asarray(args[1], jnp.result_type(args[0]))))
  if keep_scalars and name == "mul" and data[1] and not data[0] and _is_scalar_literal(program, op.ins[0]):
    return op.bind(jnp.abs(jnp.asarray(args[0], jnp.result_type(args[1]))), args[1])
  if name in ("mul", "dot_general", "conv_general_dilated"):
    args = [v if d else (jnp.asarray(v) != 0).astype(jnp.result_type(v)) for v, d in zip(args, data)]
    return op.bind(*args)
  if name == "div":
    return (args[0],)
  if name == "neg":
    return (args[0],)
  if name == "sub":
    a, b = (v if d else zero(v) for v, d in zip(args, data))
    return (a + b,)
  if name in ("add", "add_any", "concatenate"):
    return op.bind(*[v if d else zero(v) for v, d in zip(args, data)])
  if name == "pad":
    return op.bind(args[0] if data[0] else zero(args[0]), zero(args[1]))
  if name == "select_n":
    return op.bind(args[0], *[v if d else zero(v) for v, d in zip(args[1:], data[1:])])
  return op.bind(*args)


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


@functools.partial(jax.jit, static_argnums=(1,))
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

    def site_rule(site, z):
      ends.append(jnp.sum(z))  # the site's input current is an end point ...
      return sources[site.name]  # ... and its spikes a new source

    ir.walk(program, env, op_rule=lambda op, args: _structural_op(program, op, args, caller, pooling == "average"),
            site_rule=site_rule, max_rule=lambda m, args: _structural_max(m.op, args))
    ends.append(jnp.sum(ir.read(env, program.out)))
    return sum(ends)

  grads = jax.grad(connections)(sources)
  out = {k: v[0] for k, v in grads.items() if k != INPUT}
  out[INPUT] = jax.tree_util.tree_unflatten(treedef, [g[0] for g in grads[INPUT]])
  return out


def synops(snn: SpikingNetwork, trace: Trace, per_step: bool = True, pooling: str = "fold") -> dict:
  """Synaptic operations (accumulates) caused by each site's spikes: each spike x its neuron's fan-out.

  Args:
    snn: the simulated network.
    trace: its :class:`jaxsnn.Trace`.
    per_step: divide by the number of steps (SynOps per step); else the total over the run.
    pooling: ``"fold"`` or ``"average"``, see :func:`fan_out`.

  Returns:
    ``{site: scalar}``: per sample (averaged over the batch). A spiking output layer has no fan-out and is left out.

  Example:
    >>> ops = jaxsnn.analysis.synops(snn, trace)   # {'Conv_0/relu': 1.2e5, ...} per sample per step
  """
  _check_pooling(pooling, "jaxsnn.synops")
  fo = fan_out(snn, pooling)
  out = {}
  for name in snn.site_names:
    spikes = (trace.pos_spikes[name] + trace.neg_spikes[name]).astype(jnp.float32)
    total = jnp.sum(spikes * fo[name]) / spikes.shape[0]
    out[name] = total / trace.num_steps if per_step else total
  return out


_MAC_PRIMS = ("conv_general_dilated", "dot_general")


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


@jax.jit
def _ann_macs(snn: SpikingNetwork):
  caller = "jaxsnn.ann_macs"
  x1 = _unit_input(snn)
  program = ir.build_program(snn.apply_fn, snn.variables, x1, caller=caller)
  env = ir.initial_env(program, snn.variables, x1)
  ir.walk(program, env, kinds=frozenset({ir.CONST}), site_rule=None)
  per_layer, first, used = {}, {}, set()
  for op in program.ops:
    if not isinstance(op, ir.Op) or op.prim.name not in _MAC_PRIMS:
      continue
    data = [program.kind(a) != ir.CONST for a in op.ins]
    if not any(data):
      continue
    args = [jnp.ones(program.avals[a].shape, program.avals[a].dtype) if d else ir.read(env, a)
            for a, d in zip(op.ins, data)]
    (count,) = _structural_op(program, op, args, caller)
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


def energy(snn: SpikingNetwork, trace: Trace, e_mac: float = E_MAC_PJ, e_ac: float = E_AC_PJ,
           first_layer_every_step: bool = False, pooling: str = "fold") -> Energy:
  """The paper's Eq. 15 energy estimate: SNN / ANN, first layer as MACs, every other layer as ACs (SynOps).

  ``E_SNN / E_ANN = (MACs_first * e_mac + SynOps * e_ac) / (MACs * e_mac)``, per sample: the ANN's MACs from
  :func:`ann_macs`, the SNN's accumulates from :func:`synops` over the whole run. With ``pooling="fold"`` an
  average pool between two sites is folded into the next layer's synapses on the SNN side (a spike reaches every
  neuron its pooled value feeds) while the ANN pools first and then multiplies, so each pool costs the SNN up to k
  times the ANN's connections; ``pooling="average"`` gives the literature's firing rate x MACs estimate.

  Args:
    snn: the simulated network.
    trace: its :class:`jaxsnn.Trace` (the SynOps are averaged over its batch).
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
  ops = sum(synops(snn, trace, per_step=False, pooling=pooling).values(), jnp.zeros(()))
  snn_pj = macs.first_layer * e_mac * (trace.num_steps if first_layer_every_step else 1) + ops * e_ac
  ann_pj = macs.total * e_mac
  return Energy(ann_macs=macs.total, first_layer_macs=macs.first_layer, synops=ops, snn_pj=snn_pj, ann_pj=ann_pj,
                ratio=snn_pj / ann_pj)


# ----------------------------------------------------------------------------------------------------------------
# Per-site conversion error.
# ----------------------------------------------------------------------------------------------------------------

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
  acts = site_activations(snn.apply_fn, snn.variables, x)
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
