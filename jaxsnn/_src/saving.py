"""Saving and loading a converted network: one jaxsnn file (:mod:`jaxsnn._src.files`) holding everything a
:class:`~jaxsnn.SpikingNetwork` is, its program included (:mod:`jaxsnn._src.program_io`), so that a fresh process
loads it without the model's Python code and simulates it bit for bit as the original."""

from __future__ import annotations

import os
import jax
import jax.numpy as jnp
import numpy as np

from jaxsnn._src import files, ir, program_io
from jaxsnn._src.convert import SpikingNetwork
from jaxsnn._src.neurons import IF, SNM, Neuron, SignedIF

_NEURONS = {n.name: n for n in (SNM(), IF("subtract"), IF("zero"), SignedIF())}


def _plain_input(treedef, caller: str):
  """The input's structure as a tree of dicts, lists and tuples (0 where an array goes)."""
  structure = jax.tree_util.tree_unflatten(treedef, [0] * treedef.num_leaves)

  def check(node):
    if type(node) is int:
      return
    if type(node) is dict and all(isinstance(k, str) for k in node):
      return [check(v) for v in node.values()]
    if type(node) in (list, tuple):
      return [check(v) for v in node]
    raise program_io.SaveError(f"{caller}: the network's input is a pytree of {type(node).__qualname__}; a saved "
                               "network takes an array, or dicts (string keys), lists and tuples of arrays.")

  check(structure)
  return structure


def save(path: str | os.PathLike, snn: SpikingNetwork) -> None:
  """Saves a converted network to one file that :func:`load` reads in any process, without the model's code.

  The file holds everything the network is: its program (the traced ANN, as jaxsnn's own list of JAX primitives;
  no Python code), variables, thresholds, initial potentials, offsets, readout delay, neuron, readout, state dtype,
  fold, sites, input spec and the note of a dropped final softmax. It is versioned and fingerprinted, and written
  atomically (a crash leaves the previous file). The loaded network's program has the same key as this one's, so it
  simulates bit for bit the same in both schedules.

  Args:
    path: the file (``.jaxsnn`` by convention).
    snn: from :func:`jaxsnn.convert` or a recipe.

  Raises:
    ValueError: if ``snn`` is not a :class:`SpikingNetwork`, or its program holds something the format cannot hold
      (a primitive of another library, a parameter that is a Python function or a sharding: named in the message),
      or depends on the batch size, or its input is a pytree of a class of its own.
    TypeError: for variables that hold something other than arrays (named by their path).

  Example:
    >>> jaxsnn.save("snn.jaxsnn", snn)
    >>> loaded = jaxsnn.load("snn.jaxsnn")   # in any process: no model code needed
    >>> bool((jaxsnn.simulate(loaded, x, 8).outputs == jaxsnn.simulate(snn, x, 8).outputs).all())
    True
  """
  caller = "jaxsnn.save"
  if not isinstance(snn, SpikingNetwork):
    raise ValueError(f"{caller}: expected a jaxsnn.SpikingNetwork (from jaxsnn.convert or a recipe); got "
                     f"{type(snn).__name__}.")
  treedef, spec = snn.input_spec
  structure = _plain_input(treedef, caller)
  program, check_key = program_io.save(snn.apply_fn, snn.variables, snn.input_spec, caller)
  neuron = snn.neuron
  content = {
      "program": program,
      "traced_key": snn.traced.key,
      "check_key": check_key,
      "variables": snn.variables,
      "thresholds": dict(snn.thresholds),
      "initial_potential": dict(snn.initial_potential),
      "offsets": dict(snn.offsets),
      "readout_delay": np.asarray(snn.readout_delay),
      "neuron": {"name": neuron.name, "jaxsnn": _NEURONS.get(neuron.name) is neuron},
      "readout": snn.readout,
      "input": {"structure": structure, "spec": [[list(shape), str(np.dtype(dtype))] for shape, dtype in spec]},
      "site_shapes": [[name, list(shape)] for name, shape in snn.site_shapes],
      "site_kinds": [[name, kind, levels] for name, kind, levels in snn.site_kinds],
      "max_sites": list(snn.max_sites),
      "output_shape": list(snn.output_shape),
      "state_dtype": str(np.dtype(snn.state_dtype)),
      "fold": bool(snn.fold),
      "dropped_final": list(snn.dropped_final),
  }
  files.write(path, "network", content)


def _arrays(tree):
  return jax.tree_util.tree_map(jnp.asarray, tree)


def load(path: str | os.PathLike, *, neuron: Neuron | None = None) -> SpikingNetwork:
  """Loads a network saved by :func:`save`; the model's code is not needed.

  Its ``apply_fn`` is the saved program rebuilt (it returns the logits); ``variables`` keep their structure where
  it is made of dicts, lists and tuples, and pytree nodes of the model's own classes (an Equinox module) come back as
  :class:`jaxsnn.files.Node` with the same leaves, order and key paths.

  Args:
    path: the file.
    neuron: the neuron model, needed only for a network saved with a neuron of your own (its name must match); the
      neurons of jaxsnn (SNM, IF, SignedIF) are restored by name.

  Returns:
    The :class:`SpikingNetwork`.

  Raises:
    FileNotFoundError: if there is no file.
    jaxsnn.files.FormatError: for a file that is not a jaxsnn file, truncated or corrupted, of another format version,
      of another kind (e.g. stats), or altered after writing (an array that does not match its fingerprint), or whose
      program this JAX rebuilds differently from the JAX that saved it; each names what differs.
    ValueError: for a network saved with a neuron of your own and no (or another) ``neuron``.

  Example:
    >>> jaxsnn.save("snn.jaxsnn", snn)
    >>> loaded = jaxsnn.load("snn.jaxsnn")
    >>> loaded.site_names == snn.site_names
    True
  """
  caller = "jaxsnn.load"
  c = files.read(path, "network", caller=caller)
  saved = c["neuron"]
  if saved["jaxsnn"]:
    chosen = _NEURONS[saved["name"]]
    if neuron is not None and neuron is not chosen:
      raise ValueError(f"{caller}: the network was saved with jaxsnn's {saved['name']} neuron; pass no neuron (got "
                       f"{getattr(neuron, 'name', neuron)!r}), or convert snn.apply_fn again for another one.")
  else:
    if not isinstance(neuron, Neuron) or neuron.name != saved["name"]:
      raise ValueError(f"{caller}: the network was saved with a neuron of your own, {saved['name']!r}: its code is "
                       "not in the file; pass it as load(path, neuron=...).")
    chosen = neuron
  try:
    apply_fn = program_io.decode(c["program"])
  except ValueError as e:
    raise files.FormatError(f"{caller}: {os.fspath(path)!r}: {e}; it was written with jax "
                            f"{files.info(path)['writer']['jax']}.") from None
  treedef = jax.tree_util.tree_structure(c["input"]["structure"])
  input_spec = (treedef, tuple((tuple(shape), jnp.dtype(dtype)) for shape, dtype in c["input"]["spec"]))
  variables = _arrays(c["variables"])
  try:
    key = program_io.program_key(apply_fn, variables, input_spec, caller)
  except Exception as e:  # noqa: BLE001  (this JAX cannot run the saved ops)
    raise files.FormatError(f"{caller}: {os.fspath(path)!r} holds a program that this JAX ({jax.__version__}) "
                            f"cannot rebuild ({type(e).__name__}: {e}); it was written with jax "
                            f"{files.info(path)['writer']['jax']}.") from None
  if key != c["check_key"]:
    raise files.FormatError(f"{caller}: {os.fspath(path)!r} holds a program that this JAX ({jax.__version__}) rebuilds "
                            f"differently from the JAX that saved it ({files.info(path)['writer']['jax']}): its key "
                            "differs, so it would not simulate as saved. Load it with that JAX version, or convert the "
                            "model again.")
  return SpikingNetwork(
      variables=variables, thresholds=_arrays(c["thresholds"]), initial_potential=_arrays(c["initial_potential"]),
      offsets=_arrays(c["offsets"]), readout_delay=jnp.asarray(c["readout_delay"], jnp.int32),
      traced=ir.Traced(apply_fn, c["traced_key"]), neuron=chosen, readout=c["readout"], input_spec=input_spec,
      site_shapes=tuple((name, tuple(shape)) for name, shape in c["site_shapes"]),
      site_kinds=tuple((name, kind, levels) for name, kind, levels in c["site_kinds"]),
      max_sites=tuple(c["max_sites"]), output_shape=tuple(c["output_shape"]),
      state_dtype=jnp.dtype(c["state_dtype"]), fold=bool(c["fold"]), dropped_final=tuple(c["dropped_final"]))
