"""ANN -> SNN conversion: a jaxpr rewrite, not a model rewrite."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxsnn._src import ir
from jaxsnn._src.neurons import Neuron, SNM

READOUTS = ("membrane", "spike")
OUTPUT = "output"  # thresholds key of the output layer (used by readout="spike")


@jax.tree_util.register_pytree_node_class
class SpikingNetwork:
  """A converted network: the ANN's apply function and variables, thresholds per site, and the neuron model.

  It is a pytree whose leaves are the variables and the thresholds, so ``jax.jit`` functions taking it recompile only
  when the structure changes, never when values do. Build it with :func:`convert`; change values with
  :meth:`replace`.

  Attributes:
    apply_fn: the ANN's ``apply_fn(variables, x)``.
    variables: the ANN's variables (a pytree of arrays).
    thresholds: ``{site_name: array of the site's shape}`` (plus ``"output"`` for ``readout="spike"``).
    neuron: the :class:`~jaxsnn.neurons.Neuron` used at every site.
    readout: ``"membrane"`` or ``"spike"``.
    input_spec: ``(treedef, ((per-sample shape, dtype), ...))`` of the input.
    site_shapes: ``((name, shape), ...)`` of the neuron sites, in network order (shapes without the batch axis).
    max_sites: names of the max sites (max pooling), simulated with the cumulative-max rule.
    output_shape: shape of the output without the batch axis.
  """

  def __init__(self, apply_fn, variables, thresholds, neuron, readout, input_spec, site_shapes, max_sites,
               output_shape):
    self.apply_fn = apply_fn
    self.variables = variables
    self.thresholds = thresholds
    self.neuron = neuron
    self.readout = readout
    self.input_spec = input_spec
    self.site_shapes = site_shapes
    self.max_sites = max_sites
    self.output_shape = output_shape

  def _aux(self):
    return (self.apply_fn, self.neuron, self.readout, self.input_spec, self.site_shapes, self.max_sites,
            self.output_shape)

  def tree_flatten(self):
    return (self.variables, self.thresholds), self._aux()

  @classmethod
  def tree_unflatten(cls, aux, children):
    apply_fn, neuron, readout, input_spec, site_shapes, max_sites, output_shape = aux
    return cls(apply_fn, children[0], children[1], neuron, readout, input_spec, site_shapes, max_sites, output_shape)

  @property
  def site_names(self) -> tuple[str, ...]:
    return tuple(name for name, _ in self.site_shapes)

  def replace(self, *, variables=None, thresholds=None) -> "SpikingNetwork":
    """Returns a copy with new variable and/or threshold values (same structure and shapes: no recompilation).

    Raises:
      ValueError: if the new thresholds do not match the sites, or the variables' structure or shapes changed.
    """
    if variables is not None:
      old = jax.tree_util.tree_map(lambda a: (np.shape(a), jnp.result_type(a)), self.variables)
      new = jax.tree_util.tree_map(lambda a: (np.shape(a), jnp.result_type(a)), variables)
      if jax.tree_util.tree_structure(self.variables) != jax.tree_util.tree_structure(variables) or old != new:
        raise ValueError("SpikingNetwork.replace: the new variables differ in structure, shape or dtype from the "
                         "converted ones; call jaxsnn.convert again for a different network.")
    else:
      variables = self.variables
    if thresholds is not None:
      thresholds = _check_thresholds(thresholds, self.site_shapes, self.output_shape, self.readout,
                                     "SpikingNetwork.replace")
    else:
      thresholds = self.thresholds
    return SpikingNetwork(variables=variables, thresholds=thresholds, **dict(zip(
        ("apply_fn", "neuron", "readout", "input_spec", "site_shapes", "max_sites", "output_shape"), self._aux())))

  def __repr__(self):
    sites = ", ".join(f"{n}{list(s)}" for n, s in self.site_shapes)
    return (f"SpikingNetwork(neuron={self.neuron.name}, readout={self.readout!r}, "
            f"{len(self.site_shapes)} sites: {sites})")


def _check_thresholds(thresholds, site_shapes, output_shape, readout, caller) -> dict:
  if not isinstance(thresholds, Mapping):
    raise ValueError(f"{caller}: thresholds must be a dict {{site name: array}} as returned by jaxsnn.thresholds; "
                     f"got {type(thresholds).__name__}.")
  expected = dict(site_shapes)
  if readout == "spike":
    expected[OUTPUT] = output_shape
  missing = [k for k in expected if k not in thresholds]
  extra = [k for k in thresholds if k not in expected and k != OUTPUT]
  if missing or extra:
    raise ValueError(
        f"{caller}: thresholds do not match the network's neuron sites.\n"
        f"  missing: {missing}\n  unexpected: {extra}\n  sites of this network: {list(expected)}\n"
        "Calibrate this same apply_fn (jaxsnn.calibrate) and build thresholds from its stats"
        + (" (readout='spike' also needs 'output')." if OUTPUT in missing else "."))
  out = {}
  for name, shape in expected.items():
    th = thresholds[name]
    if np.shape(th) != tuple(shape):
      raise ValueError(f"{caller}: threshold '{name}' has shape {np.shape(th)}, but the site has shape "
                       f"{tuple(shape)} (per-neuron, without the batch axis). jaxsnn.thresholds broadcasts "
                       "layer- and channel-wise values to the site shape.")
    th = jnp.asarray(th)
    if not jnp.issubdtype(th.dtype, jnp.floating):
      raise ValueError(f"{caller}: threshold '{name}' has dtype {th.dtype}; thresholds must be floating point.")
    if not isinstance(th, jax.core.Tracer):
      bad = ~np.isfinite(np.asarray(th)) | (np.asarray(th) < 0)
      if bad.any():
        raise ValueError(f"{caller}: threshold '{name}' has {int(bad.sum())} negative or non-finite values; "
                         "thresholds must be finite and >= 0 (0 marks a dead neuron that never fires).")
    out[name] = th
  return out


def _input_spec(x, caller):
  leaves, treedef = jax.tree_util.tree_flatten(x)
  spec = []
  for leaf in leaves:
    shape = np.shape(leaf)
    if len(shape) < 1:
      raise ValueError(f"{caller}: every input array needs a leading batch axis; got a scalar.")
    spec.append((tuple(shape[1:]), jnp.result_type(leaf)))
  return treedef, tuple(spec)


def check_input(snn: SpikingNetwork, x, caller: str) -> int:
  """Checks that ``x`` matches the converted input (up to batch size) and returns the batch size."""
  treedef, spec = _input_spec(x, caller)
  want_tree, want_spec = snn.input_spec
  if treedef != want_tree:
    raise ValueError(f"{caller}: input structure {treedef} does not match the converted one {want_tree}.")
  for (shape, dtype), (want_shape, want_dtype) in zip(spec, want_spec):
    if shape != want_shape or dtype != want_dtype:
      raise ValueError(
          f"{caller}: input has per-sample shape {shape} and dtype {dtype}, but the network was converted for "
          f"per-sample shape {want_shape} and dtype {want_dtype} (batch axis first: [batch, {', '.join(map(str, want_shape))}]).")
  sizes = {np.shape(leaf)[0] for leaf in jax.tree_util.tree_leaves(x)}
  if len(sizes) != 1:
    raise ValueError(f"{caller}: input leaves have different batch sizes {sorted(sizes)}.")
  return sizes.pop()


def convert(apply_fn: Callable, variables: Any, example_input: Any, thresholds: Mapping[str, Any],
            neuron: Neuron | None = None, readout: str = "membrane") -> SpikingNetwork:
  """Converts a ReLU ANN into a spiking network.

  ``apply_fn`` is traced to a jaxpr: every ReLU becomes a neuron site; every other operation on spike-dependent values
  must be affine and is applied unchanged to the per-step tensors (conv, dense, BatchNorm in eval mode, average pool,
  residual add, concatenate, reshape, pad, ...); max pooling uses the cumulative-max rule (see :func:`simulate`).
  Operations on the input alone are evaluated once (the input is a constant analog current every step).

  Args:
    apply_fn: ``apply_fn(variables, x) -> logits``, e.g. ``lambda v, x: model.apply(v, x, train=False)``. It must treat
      batch entries independently (no batch statistics).
    variables: the ANN's variables.
    example_input: an input batch (only its shapes and dtypes are used; any batch size).
    thresholds: ``{site_name: array}`` with each site's shape (without batch), e.g. from :func:`jaxsnn.thresholds`.
    neuron: the neuron model at every site; default :func:`jaxsnn.SNM`.
    readout: ``"membrane"`` accumulates the output layer's current over time; ``"spike"`` makes the output layer a
      spiking layer (same neuron) with threshold ``thresholds["output"]`` (max logit per class, as the authors' code).

  Returns:
    A :class:`SpikingNetwork`.

  Raises:
    ConversionError: if the network contains an operation without a spiking equivalent (names the primitive and
      the source line).
    ValueError: for a bad readout, neuron or input, or thresholds whose names or shapes do not match the sites.

  Example:
    >>> stats = jaxsnn.calibrate(apply_fn, variables, train_batches)
    >>> snn = jaxsnn.convert(apply_fn, variables, x[:1], jaxsnn.thresholds(stats))
  """
  caller = "jaxsnn.convert"
  neuron = SNM() if neuron is None else neuron
  if not isinstance(neuron, Neuron):
    raise ValueError(f"{caller}: neuron must be a jaxsnn.neurons.Neuron (e.g. jaxsnn.SNM()); got {neuron!r}.")
  if readout not in READOUTS:
    raise ValueError(f"{caller}: readout must be one of {READOUTS}; got {readout!r}.")
  input_spec = _input_spec(example_input, caller)
  program = ir.build_program(apply_fn, variables, example_input, caller=caller)
  site_shapes = tuple((s.name, tuple(program.avals[s.x].shape[1:])) for s in program.sites)
  if isinstance(program.out, ir.Lit) or len(program.avals[program.out].shape) < 1:
    raise ValueError(f"{caller}: the network output must have a leading batch axis.")
  output_shape = tuple(program.avals[program.out].shape[1:])
  thresholds = _check_thresholds(thresholds, site_shapes, output_shape, readout, caller)
  return SpikingNetwork(apply_fn, variables, thresholds, neuron, readout, input_spec, site_shapes,
                        tuple(m.name for m in program.max_sites), output_shape)
