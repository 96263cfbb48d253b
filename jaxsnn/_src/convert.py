"""ANN -> SNN conversion: a jaxpr rewrite, not a model rewrite."""

from __future__ import annotations

import dataclasses
import inspect
import numbers
from collections.abc import Mapping
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxsnn._src import ir
from jaxsnn._src.ir import OUTPUT
from jaxsnn._src.neurons import Neuron, SNM

READOUTS = ("membrane", "spike")


def _static(**kwargs):
  return dataclasses.field(metadata=dict(static=True), **kwargs)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SpikingNetwork:
  """A converted network: the ANN's program and variables, per-site data, and the neuron model.

  A frozen dataclass pytree. Its leaves are the data: the variables and, per neuron site, the thresholds, initial
  potentials and current offsets; a jitted function taking it compiles once per network structure and never again
  when those values change (:meth:`replace`). Its static part identifies the converted program by what it computes
  (:class:`jaxsnn._src.ir.Traced`), not by the Python function object, so converting an equal ``apply_fn`` again
  (a fresh ``lambda``, a notebook cell run twice) reuses the compiled simulator. Build it with :func:`convert`; keep it
  with :func:`jaxsnn.save` (one file, loadable by :func:`jaxsnn.load` in any process without the model's code).

  Attributes:
    variables: the ANN's variables (a pytree of arrays).
    thresholds: ``{site: array of the site's shape}`` (plus ``"output"`` for ``readout="spike"``), in the site's
      dtype.
    initial_potential: ``{site: array of the site's shape}``: every neuron starts at ``v = initial_potential *
      threshold`` (0: the paper; 0.5: optimal initialisation, the default of QCFS sites); plus ``"output"`` for
      ``readout="spike"``.
    offsets: ``{site: array of the site's shape}``: a current added to every neuron at every step (0 unless a
      calibration pass such as :func:`jaxsnn.calibrate_snn` sets it).
    readout_delay: an int32 scalar ``d``: the readout after ``t`` steps averages the output over steps
      ``min(d, t - 1) + 1 .. t`` only, leaving out the first steps, while the deep layers still settle (0, the
      default: every step counts). Chosen from training data by :func:`jaxsnn.choose_readout_delay`.
    traced: the converted ANN function and the key of its program.
    neuron: the :class:`~jaxsnn.neurons.Neuron` used at every site.
    readout: ``"membrane"`` or ``"spike"``.
    input_spec: ``(treedef, ((per-sample shape, dtype), ...))`` of the input.
    site_shapes: ``((name, shape), ...)`` of the neuron sites, in network order (shapes without the batch axis).
    site_kinds: ``((name, "relu" | "qcfs", levels or None), ...)``.
    max_sites: names of the max sites (max pooling), simulated with the cumulative-max rule.
    output_shape: shape of the output without the batch axis.
    state_dtype: dtype of membrane potentials and of the readout accumulator (float32 for float32 and narrower
      networks, e.g. bfloat16, so that small currents are not lost).
    fold: the simulator folds constant affine chains (biases, eval-mode BatchNorm) into the kernels of the spiking
      matmuls and convolutions (:func:`jaxsnn._src.ir.fold_affine`).
    dropped_final: the final maps of ``apply_fn`` left out of the SNN, e.g. ``("log_softmax",)``: a softmax or
      log_softmax over every axis but the batch axis, which changes no argmax. The SNN's readout, the ANN reference
      of every jaxsnn tool and the calibrated ``"output"`` statistic are then the logits, its input.
  """

  variables: Any
  thresholds: dict
  initial_potential: dict
  offsets: dict
  readout_delay: Any
  traced: ir.Traced = _static()
  neuron: Neuron = _static()
  readout: str = _static()
  input_spec: tuple = _static()
  site_shapes: tuple = _static()
  site_kinds: tuple = _static()
  max_sites: tuple = _static()
  output_shape: tuple = _static()
  state_dtype: Any = _static()
  fold: bool = _static(default=True)
  dropped_final: tuple = _static(default=())

  @property
  def apply_fn(self) -> Callable:
    """The ANN's ``apply_fn(variables, x)``."""
    return self.traced.fn

  @property
  def site_names(self) -> tuple[str, ...]:
    return tuple(name for name, _ in self.site_shapes)

  def replace(self, **changes) -> "SpikingNetwork":
    """Returns a copy with new data (same structure and shapes: no recompilation).

    Args:
      **changes: any of ``variables``, ``thresholds``, ``initial_potential`` (a float for every neuron, or a dict
        ``{site: array}``; sites left out keep their values), ``offsets`` (a dict ``{site: array}``, sites left out
        keep theirs), ``readout_delay`` (a non-negative int).

    Raises:
      ValueError: for an unknown field, new variables of another structure, shape or dtype, or per-site values of
        the wrong names, shapes or dtypes, negative thresholds, or non-finite values.
    """
    caller = "SpikingNetwork.replace"
    unknown = sorted(set(changes) - {"variables", "thresholds", "initial_potential", "offsets", "readout_delay"})
    if unknown:
      raise ValueError(f"{caller}: cannot replace {unknown}; only variables, thresholds, initial_potential, offsets "
                       "and readout_delay are data (call jaxsnn.convert again for another neuron, readout or "
                       "network).")
    out = {}
    if "variables" in changes:
      variables = changes["variables"]
      old = jax.tree_util.tree_map(lambda a: (np.shape(a), jnp.result_type(a)), self.variables)
      new = jax.tree_util.tree_map(lambda a: (np.shape(a), jnp.result_type(a)), variables)
      if jax.tree_util.tree_structure(self.variables) != jax.tree_util.tree_structure(variables) or old != new:
        raise ValueError(f"{caller}: the new variables differ in structure, shape or dtype from the converted ones; "
                         "call jaxsnn.convert again for a different network.")
      out["variables"] = variables
    shapes, dtypes = _neuron_shapes(self.site_shapes, self.output_shape, self.readout), _dtypes(self)
    if "thresholds" in changes:
      out["thresholds"] = _check_thresholds(changes["thresholds"], shapes, dtypes, caller)
    if "initial_potential" in changes:
      out["initial_potential"] = _check_per_neuron(changes["initial_potential"], shapes, dtypes,
                                                   "initial_potential", caller, self.initial_potential)
    if "offsets" in changes:
      site_shapes = dict(self.site_shapes)
      out["offsets"] = _check_per_neuron(changes["offsets"], site_shapes, dtypes, "offsets", caller, self.offsets)
    if "readout_delay" in changes:
      out["readout_delay"] = _check_delay(changes["readout_delay"], caller)
    return dataclasses.replace(self, **out)

  def __repr__(self):
    kinds = {name: kind for name, kind, _ in self.site_kinds}
    sites = ", ".join(f"{n}{list(s)}" + ("" if kinds.get(n) == ir.RELU else f"[{kinds.get(n)}]")
                      for n, s in self.site_shapes)
    note = conversion_note(self)
    return (f"SpikingNetwork(neuron={self.neuron.name}, readout={self.readout!r}, "
            f"{len(self.site_shapes)} sites: {sites}" + (f"; {note}" if note else "") + ")")


def conversion_note(snn: SpikingNetwork) -> str:
  """What the conversion left out of ``apply_fn``, in words ("" if nothing): e.g. ``"dropped final log_softmax
  (monotone: changes no argmax; the SNN's readout is the logits)"``."""
  if not snn.dropped_final:
    return ""
  return (f"dropped final {' and '.join(snn.dropped_final)} (monotone: changes no argmax; the SNN's readout is the "
          "logits)")


def _dtypes(snn: SpikingNetwork) -> dict:
  return {k: jnp.asarray(v).dtype for k, v in snn.thresholds.items()}


def _neuron_shapes(site_shapes, output_shape, readout) -> dict:
  shapes = dict(site_shapes)
  if readout == "spike":
    shapes[OUTPUT] = tuple(output_shape)
  return shapes


def _names_error(caller, what, missing, extra, expected, advice) -> ValueError:
  return ValueError(f"{caller}: {what} do not match the network's neuron sites.\n  missing: {missing}\n"
                    f"  unexpected: {extra}\n  sites of this network: {list(expected)}\n{advice}")


def _check_thresholds(thresholds, shapes: dict, dtypes: dict, caller: str) -> dict:
  if not isinstance(thresholds, Mapping):
    raise ValueError(f"{caller}: thresholds must be a dict {{site name: array}} as returned by jaxsnn.thresholds; "
                     f"got {type(thresholds).__name__}.")
  missing = [k for k in shapes if k not in thresholds]
  extra = [k for k in thresholds if k not in shapes and k != OUTPUT]
  if missing or extra:
    raise _names_error(
        caller, "thresholds", missing, extra, shapes,
        "Calibrate this same apply_fn (jaxsnn.calibrate) and build thresholds from its stats"
        + (" (readout='spike' also needs 'output')." if OUTPUT in missing else "."))
  out = {}
  for name, shape in shapes.items():
    th = thresholds[name]
    if np.shape(th) != tuple(shape):
      raise ValueError(f"{caller}: threshold '{name}' has shape {np.shape(th)}, but the site has shape "
                       f"{tuple(shape)} (per-neuron, without the batch axis). jaxsnn.thresholds broadcasts "
                       "layer- and channel-wise values to the site shape.")
    if not jnp.issubdtype(jnp.result_type(th), jnp.floating):
      raise ValueError(f"{caller}: threshold '{name}' has dtype {jnp.result_type(th)}; thresholds must be floating "
                       "point.")
    if not isinstance(th, jax.core.Tracer):
      values = np.asarray(th, np.float64)
      bad = ~np.isfinite(values) | (values < 0)
      if bad.any():
        raise ValueError(f"{caller}: threshold '{name}' has {int(bad.sum())} negative or non-finite values; "
                         "thresholds must be finite and >= 0 (0 marks a dead neuron that never fires).")
    # In the site's dtype: float32 thresholds on a bfloat16 network would otherwise fail inside jit (lax.add).
    out[name] = jnp.asarray(th, dtypes[name])
  return out


def _check_per_neuron(values, shapes: dict, dtypes: dict, what: str, caller: str, base: dict | None) -> dict:
  """A float for every neuron or ``{site: array of the site's shape}`` -> a full dict in the sites' dtypes."""
  if isinstance(values, numbers.Real) and not isinstance(values, bool):
    if not np.isfinite(values):
      raise ValueError(f"{caller}: {what} must be finite; got {values!r}.")
    return {name: jnp.full(shape, values, dtypes[name]) for name, shape in shapes.items()}
  if not isinstance(values, Mapping):
    raise ValueError(f"{caller}: {what} must be a float or a dict {{site name: array of the site's shape}}; got "
                     f"{type(values).__name__}.")
  extra = [k for k in values if k not in shapes]
  if extra:
    raise _names_error(caller, what, [], extra, shapes, "Use the site names of snn.site_names.")
  out = dict(base) if base is not None else {}
  for name, shape in shapes.items():
    if name not in values:
      continue
    value = values[name]
    if np.shape(value) not in (tuple(shape), ()):
      raise ValueError(f"{caller}: {what} '{name}' has shape {np.shape(value)}, but the site has shape "
                       f"{tuple(shape)} (per neuron, without the batch axis), or give a scalar.")
    if not isinstance(value, jax.core.Tracer):
      bad = ~np.isfinite(np.asarray(value, np.float64))
      if bad.any():
        raise ValueError(f"{caller}: {what} '{name}' has {int(bad.sum())} non-finite values.")
    out[name] = jnp.broadcast_to(jnp.asarray(value, dtypes[name]), shape)
  return out


def _check_delay(value, caller: str):
  """A non-negative int (Python, numpy or a scalar integer array; a tracer passes unchecked) -> an int32 scalar."""
  if isinstance(value, jax.core.Tracer):
    if value.shape != () or not jnp.issubdtype(value.dtype, jnp.integer):
      raise ValueError(f"{caller}: readout_delay must be an integer scalar; got {value.dtype}{list(value.shape)}.")
    return value.astype(jnp.int32)
  a = np.asarray(value)
  if isinstance(value, bool) or a.shape != () or not np.issubdtype(a.dtype, np.integer):
    raise ValueError(f"{caller}: readout_delay must be an int (steps left out of the readout); got {value!r}.")
  if int(a) < 0:
    raise ValueError(f"{caller}: readout_delay must be >= 0 (steps left out of the readout); got {int(a)}.")
  return jnp.asarray(int(a), jnp.int32)


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
          f"per-sample shape {want_shape} and dtype {want_dtype} (batch axis first: "
          f"[batch, {', '.join(map(str, want_shape))}]).")
  sizes = {np.shape(leaf)[0] for leaf in jax.tree_util.tree_leaves(x)}
  if len(sizes) != 1:
    raise ValueError(f"{caller}: input leaves have different batch sizes {sorted(sizes)}.")
  return sizes.pop()


def _qcfs_thresholds(program: ir.Program, variables) -> dict:
  """Each QCFS site's trained lambda, broadcast to the site's shape."""
  sites = [s for s in program.sites if s.kind == ir.QCFS]
  if not sites:
    return {}
  env = dict(zip(program.var_ids, jax.tree_util.tree_leaves(variables)))
  env.update(program.consts)
  ir.walk(program, env, kinds=frozenset({ir.CONST}))
  out = {}
  for s in sites:
    full = program.avals[s.x].shape
    lam = jnp.asarray(ir.read(env, s.ins[1]), program.avals[s.x].dtype)
    if lam.ndim == len(full):  # broadcast against the batch axis too: it must not vary over it
      if lam.shape[0] != 1:
        raise ir.ConversionError(f"jaxsnn.convert: the QCFS threshold at {s.where} has shape {lam.shape}, which "
                                 "varies over the batch; it must be a parameter.")
      lam = lam[0]
    out[s.name] = jnp.broadcast_to(lam, full[1:])
  return out


def _state_dtype(dtypes, state_dtype):
  if state_dtype is not None:
    return jnp.dtype(state_dtype)
  widest = jnp.result_type(*dtypes) if dtypes else jnp.dtype(jnp.float32)
  return jnp.promote_types(widest, jnp.float32)


def convert(apply_fn: Callable, variables: Any, example_input: Any, thresholds: Mapping[str, Any] | None = None,
            neuron: Neuron | None = None, readout: str = "membrane", *, initial_potential=None,
            readout_delay: int = 0, state_dtype=None, fold: bool = True) -> SpikingNetwork:
  """Converts a ReLU (or QCFS) ANN into a spiking network.

  ``apply_fn`` is traced to a jaxpr: every activation becomes a neuron site (ReLU, ``jnp.where(x > 0, x, 0)``, or
  :class:`jaxsnn.models.QCFS`); every other operation on spike-dependent values must be affine and is applied
  unchanged to the per-step tensors (conv, dense, BatchNorm in eval mode, average pool, residual add, concatenate,
  reshape, pad, split, scatter-add, ...); max pooling uses the cumulative-max rule (see :func:`simulate`). Operations
  on the input alone are evaluated once (the input is a constant analog current every step).

  Args:
    apply_fn: ``apply_fn(variables, x) -> logits``, e.g. ``lambda v, x: model.apply(v, x, train=False)``. It must treat
      batch entries independently (no batch statistics) and draw no random numbers (dropout in eval mode). A final
      softmax or log_softmax (over every axis but the batch axis) is dropped, and said in
      :attr:`SpikingNetwork.dropped_final`: it changes no argmax, and the SNN reads out the logits.
    variables: the ANN's variables.
    example_input: an input batch (only its shapes and dtypes are used; any batch size).
    thresholds: ``{site_name: array}`` with each site's shape (without batch), e.g. from :func:`jaxsnn.thresholds`.
      A QCFS site left out (or ``thresholds=None``) takes its trained lambda; every ReLU site needs one.
    neuron: the neuron model at every site; default :func:`jaxsnn.SNM`.
    readout: ``"membrane"`` accumulates the output layer's current over time; ``"spike"`` makes the output layer a
      spiking layer (same neuron) with threshold ``thresholds["output"]`` (max logit per class, as the authors' code).
    initial_potential: where every neuron's membrane starts, as a fraction of its threshold: a float for every
      neuron, or ``{site: array of the site's shape}`` (sites left out take the default). Default (None): 0 for ReLU
      sites and the output (the paper), 0.5 for QCFS sites (Bu et al. 2022: zero expected conversion error).
    readout_delay: steps left out at the start of the readout (:attr:`SpikingNetwork.readout_delay`); 0 (default):
      every step counts, as in the paper.
    state_dtype: dtype of the membrane potentials and of the readout accumulator. Default: float32, or the
      network's dtype if it is wider; a bfloat16 network keeps float32 state so that small currents still count.
    fold: fold each spiking matmul's or convolution's constant affine chain (bias, eval-mode BatchNorm) into its
      kernel and one bias, computed once before the time loop: every step then runs one contraction and one add
      instead of the chain. Equal to the unfolded simulation up to float rounding; both schedules run the same
      folded program and stay bit-identical. False simulates the ANN's ops exactly as traced.

  Returns:
    A :class:`SpikingNetwork`.

  Raises:
    ConversionError: if the network contains an operation without a spiking equivalent (names the primitive and
      the source line), draws random numbers (train-mode dropout), has no activation to convert, or has an
      activation whose leading axis is not the batch axis.
    ValueError: for a bad readout, neuron or input, or thresholds / potentials whose names, shapes or values do
      not fit the sites.

  Example:
    >>> stats = jaxsnn.calibrate(apply_fn, variables, train_batches)
    >>> snn = jaxsnn.convert(apply_fn, variables, x[:1], jaxsnn.thresholds(stats), initial_potential=0.5)
  """
  caller = "jaxsnn.convert"
  neuron = SNM() if neuron is None else neuron
  if not isinstance(neuron, Neuron):
    raise ValueError(f"{caller}: neuron must be a jaxsnn.neurons.Neuron (e.g. jaxsnn.SNM()); got {neuron!r}.")
  try:
    inspect.signature(neuron.step).bind(None, None, None, None)
  except TypeError:
    raise ValueError(f"{caller}: neuron {neuron.name!r}: its step must take (threshold, state, current, fire) and take "
                     "every firing decision as fire(v, threshold) (see jaxsnn.neurons.Neuron): that is where a "
                     "surrogate gradient enters, and where differentiating exact spikes is refused.") from None
  except ValueError:  # no signature to read (a builtin): trust the declaration
    pass
  if readout not in READOUTS:
    raise ValueError(f"{caller}: readout must be one of {READOUTS}; got {readout!r}.")
  input_spec = _input_spec(example_input, caller)
  apply_fn, variables = ir.split_variables(apply_fn, variables)
  program, traced = ir.trace(apply_fn, variables, example_input, caller=caller)
  if not program.sites:
    found = (f" It uses {', '.join(program.activations)}, which has no spiking form: train the ANN with relu in its "
             "place." if program.activations else "")
    raise ir.ConversionError(
        f"{caller}: the network has no activation that becomes a spiking neuron (no ReLU or QCFS acting on the "
        f"data), so there is nothing to convert; a network of affine ops alone is its own SNN.{found}")
  ir.check_batch_axis(apply_fn, variables, example_input, caller=caller)
  site_shapes = tuple((s.name, tuple(program.avals[s.x].shape[1:])) for s in program.sites)
  if isinstance(program.out, ir.Lit) or len(program.avals[program.out].shape) < 1:
    raise ValueError(f"{caller}: the network output must have a leading batch axis.")
  output_shape = tuple(program.avals[program.out].shape[1:])
  shapes = _neuron_shapes(site_shapes, output_shape, readout)
  dtypes = {s.name: program.avals[s.x].dtype for s in program.sites}
  dtypes[OUTPUT] = program.avals[program.out].dtype

  if thresholds is not None and not isinstance(thresholds, Mapping):
    given = thresholds  # _check_thresholds names the wrong type
  else:
    given = dict(thresholds) if thresholds is not None else {}
    for name, lam in _qcfs_thresholds(program, variables).items():
      given.setdefault(name, lam)
  thresholds = _check_thresholds(given, shapes, dtypes, caller)

  default = {s.name: 0.5 if s.kind == ir.QCFS else 0.0 for s in program.sites}
  potentials = {name: jnp.full(shape, default.get(name, 0.0), dtypes[name]) for name, shape in shapes.items()}
  if initial_potential is not None:
    potentials = _check_per_neuron(initial_potential, shapes, dtypes, "initial_potential", caller, potentials)
  offsets = {name: jnp.zeros(shape, dtypes[name]) for name, shape in site_shapes}
  return SpikingNetwork(
      variables=variables, thresholds=thresholds, initial_potential=potentials, offsets=offsets,
      readout_delay=_check_delay(readout_delay, caller), traced=traced,
      neuron=neuron, readout=readout, input_spec=input_spec, site_shapes=site_shapes,
      site_kinds=tuple((s.name, s.kind, s.levels) for s in program.sites),
      max_sites=tuple(m.name for m in program.max_sites), output_shape=output_shape,
      state_dtype=_state_dtype(list(dtypes.values()), state_dtype), fold=bool(fold), dropped_final=program.dropped)
