"""A converted network's program, saved and rebuilt without the model's Python code.

The second module of jaxsnn that touches jaxprs' internals (``jax.extend.core``, beside :mod:`jaxsnn._src.ir`): the
registry of primitives by name, the encoding of their parameters and literals.

**What is saved.** jaxsnn's own program representation (:class:`jaxsnn._src.ir.Program`): every op as (primitive
name, parameters, operand ids or literals, result ids, module scope), every ReLU or QCFS site as (kind, operands,
result, module), the closed-over constants as arrays. Written into a jaxsnn file (:mod:`jaxsnn._src.files`) as JSON
and ``.npy`` arrays. The program is traced at two batch sizes (2 and 3): a parameter that differs between the two is
a batch-sized dimension, saved as ``a * batch + c``; anything else that differs (another op, a literal, a constant)
means the program depends on the batch size, and it is refused. :class:`Replay` is the apply function rebuilt from
the saved form: a walk over the ops that binds each primitive again (inside the op's name scope, so that sites get
their names back), every batch-sized dimension evaluated for the batch it is called on. Tracing it gives a program
with the same :attr:`~jaxsnn._src.ir.Program.key` as the original network's, checked when the file is written (at
batch sizes 2 and 5) and again when it is read: the simulator, the step function and every compiled cache treat the
loaded network as the original.

(Why not one trace with a symbolic batch size, as ``jax.export`` does: ``jax.numpy`` traces some operations to
other primitives when a shape is symbolic (``x[:, :1]`` is a ``slice`` at a known batch size and a ``gather`` at a
symbolic one), so a symbolic program is not the program the original network runs.)

**Why not** ``jax.export`` **(StableHLO)**: an exported function is opaque to the converter: its ReLU sites, the
affine ops between them and their module names are gone, and jaxsnn needs exactly those to simulate (every site
becomes a neuron; every affine op runs on spikes every step; the fold and the layer-major schedule rewrite the
program). It is also fixed to the shapes and platforms it was exported for. **Why not pickle**: reading a pickle runs
whatever code it names (a file becomes a program), and the model's functions (a ``lambda``, a Flax module) do not
pickle anyway. jaxsnn's own representation is what the converter reads, holds no code, and is checked field by field.

**What is refused** (a clear error at save, naming it): a primitive that is not one of JAX's own
(``jax.extend.core.primitives``) or jaxsnn's QCFS primitive (a custom primitive of another library), and parameters
of any type but None, bools, ints, floats, strings, tuples, dtypes, the enums of
``jax.lax`` (``Precision``, ``DotAlgorithmPreset``, ``RoundingMethod``, ``GatherScatterMode``, ...), its dimension
NamedTuples (``ConvDimensionNumbers``, ``GatherDimensionNumbers``, ``ScatterDimensionNumbers``, ``DotAlgorithm``)
and jaxprs made of these (a scatter-add's combiner): a Python function, a sharding, an array. A network whose program
depends on the batch size other than through its dimensions is refused too.
"""

from __future__ import annotations

import enum
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore
from jax.extend.core import primitives as P

from jaxsnn._src import ir
from jaxsnn._src.qcfs import qcfs, qcfs_p

TRACE_BATCHES = (2, 3)  # the batch sizes a saved program is traced at: what differs is a batch dimension
CHECK_BATCHES = (2, 5)  # the batch sizes at which the rebuilt program is checked against the original


def _primitives() -> dict:
  found = {}
  for p in list(vars(P).values()) + [qcfs_p]:
    if isinstance(p, jcore.Primitive):
      found.setdefault(p.name, set()).add(p)
  return {name: next(iter(ps)) for name, ps in found.items() if len(ps) == 1}  # an ambiguous name is refused


PRIMITIVES = _primitives()
_ENUMS = {c.__name__: c for c in (lax.Precision, lax.DotAlgorithmPreset, lax.RoundingMethod, lax.GatherScatterMode,
                                  lax.FftType, lax.RandomAlgorithm, lax.AccuracyMode)}
_RECORDS = {c.__name__: c for c in (lax.ConvDimensionNumbers, lax.GatherDimensionNumbers,
                                    lax.ScatterDimensionNumbers, lax.DotAlgorithm)}


class SaveError(ValueError):
  """Raised when a network's program holds something the file format cannot hold (named in the message)."""


# ----------------------------------------------------------------------------------------------------------------
# Encoding.
# ----------------------------------------------------------------------------------------------------------------

class _Encoder:
  def __init__(self, caller: str):
    self.caller = caller

  def refuse(self, what: str, where: str) -> SaveError:
    return SaveError(f"{self.caller}: cannot save the network's program: {what} ({where}); the jaxsnn file format "
                     "holds JAX's own primitives and jaxsnn's, with parameters made of numbers, strings, tuples, "
                     "dtypes, jax.lax's enums and dimension numbers, and jaxprs of these (see "
                     "jaxsnn._src.program_io).")

  def prim(self, prim, where: str) -> str:
    if PRIMITIVES.get(prim.name) is not prim:
      raise self.refuse(f"primitive '{prim.name}' ({type(prim).__module__}.{type(prim).__qualname__}) is not one of "
                        "JAX's own (jax.extend.core.primitives) or jaxsnn's QCFS", where)
    return prim.name

  def param(self, value, where: str):
    if value is None or isinstance(value, str) or type(value) in (bool, int, float):
      return value
    if isinstance(value, tuple) and hasattr(value, "_fields"):
      cls = _RECORDS.get(type(value).__name__)
      if cls is not type(value):
        raise self.refuse(f"a parameter of type {type(value).__module__}.{type(value).__qualname__}", where)
      return {"$": "record", "type": cls.__name__, "fields": [self.param(v, where) for v in value]}
    if isinstance(value, (tuple, list)):
      return type(value)(self.param(v, where) for v in value)
    if isinstance(value, enum.Enum):
      cls = _ENUMS.get(type(value).__name__)
      if cls is not type(value):
        raise self.refuse(f"a parameter of type {type(value).__module__}.{type(value).__qualname__}", where)
      return {"$": "enum", "type": cls.__name__, "name": value.name}
    if isinstance(value, np.dtype):
      return {"$": "dtype", "name": str(value)}
    if _typed_scalar(value):
      return {"$": "typed", "value": self.param(_python(value), where), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
      return {"$": "scalar", "value": value}
    if isinstance(value, jcore.ClosedJaxpr):
      return self.jaxpr(value.jaxpr, value.consts, True, where)
    if isinstance(value, jcore.Jaxpr):
      return self.jaxpr(value, (), False, where)
    raise self.refuse(f"a parameter of type {type(value).__module__}.{type(value).__qualname__} ({value!r:.60})",
                      where)

  def literal(self, val, where: str) -> dict:
    if isinstance(val, np.ndarray):  # jaxprs hold their array literals as a subclass of ndarray that may be weak
      return {"lit": "array", "value": np.asarray(val), "weak": bool(getattr(getattr(val, "aval", None),
                                                                              "weak_type", False))}
    if _typed_scalar(val):  # a weakly typed Python scalar: a subclass of int or float that carries its dtype
      return {"lit": "scalar", "value": _python(val), "dtype": str(val.dtype)}
    if type(val) in (bool, int, float) or isinstance(val, np.generic):
      return {"lit": "value", "value": val}
    raise self.refuse(f"a literal of type {type(val).__module__}.{type(val).__qualname__}", where)

  def atom(self, a, where: str):
    return self.literal(a.val, where) if isinstance(a, ir.Lit) else int(a)

  def aval(self, aval) -> dict:
    return {"shape": [self.param(d, "a shape") for d in aval.shape], "dtype": str(aval.dtype),
            "weak": bool(getattr(aval, "weak_type", False))}

  def jaxpr(self, jaxpr, consts, closed: bool, where: str) -> dict:
    if jaxpr.effects:
      raise self.refuse(f"a sub-jaxpr with effects {jaxpr.effects}", where)
    ids: dict = {}

    def var(v):
      if isinstance(v, jcore.Literal):
        return self.literal(v.val, where)
      if v not in ids:
        ids[v] = len(ids)
      return ids[v]

    out = {"$": "jaxpr", "closed": closed, "constvars": [var(v) for v in jaxpr.constvars],
           "consts": [np.asarray(c) for c in consts], "const_avals": [self.aval(v.aval) for v in jaxpr.constvars],
           "invars": [var(v) for v in jaxpr.invars], "in_avals": [self.aval(v.aval) for v in jaxpr.invars], "eqns": []}
    for eqn in jaxpr.eqns:
      inner = f"{eqn.primitive.name} inside {where}"
      out["eqns"].append({"prim": self.prim(eqn.primitive, inner), "in": [var(v) for v in eqn.invars],
                          "params": {k: self.param(v, f"parameter '{k}' of {inner}") for k, v in eqn.params.items()},
                          "out": [var(v) for v in eqn.outvars]})
    out["outvars"] = [var(v) for v in jaxpr.outvars]
    return out


def _typed_scalar(value) -> bool:
  """A Python int or float of a subclass that carries a dtype (how a jaxpr holds a weakly typed scalar)."""
  return (isinstance(value, (int, float)) and type(value) not in (bool, int, float) and hasattr(value, "dtype")
          and not isinstance(value, np.generic))


def _python(value):
  return int(value) if isinstance(value, int) else float(value)


def _module(name: str, kind: str) -> str:
  """The module a site or max site was named after: ``"Conv_0"`` for ``"Conv_0/relu"`` or ``"Conv_0/relu_2"``."""
  base = name
  if not base.endswith(kind):
    base = base.rsplit("_", 1)[0]
  return base[:-len(kind)].rstrip("/")


def encode(program: ir.Program, caller: str) -> dict:
  """The saved form of ``program`` (a tree of JSON values and NumPy arrays for :func:`jaxsnn._src.files.write`).

  Raises:
    SaveError: for a primitive or a parameter the format does not hold (named).
  """
  e = _Encoder(caller)
  ops = []
  for op in program.ops:
    if isinstance(op, ir.Site):
      where = f"the {op.kind} site '{op.name}'"
      entry = {"site": op.kind, "in": [e.atom(a, where) for a in op.ins], "out": [int(op.out)],
               "module": _module(op.name, op.kind)}
      if op.kind == ir.QCFS:
        entry["levels"] = int(op.levels)
      ops.append(entry)
      continue
    inner = op.op if isinstance(op, ir.MaxSite) else op
    where = f"primitive '{inner.prim.name}' at {inner.where or 'an unknown source line'}"
    entry = {"prim": e.prim(inner.prim, where), "in": [e.atom(a, where) for a in inner.ins],
             "out": [int(o) for o in inner.outs], "scope": inner.scope,
             "params": {k: e.param(v, f"parameter '{k}' of {where}") for k, v in inner.params.items()}}
    if isinstance(op, ir.MaxSite):
      entry["max_site"] = _module(op.name, inner.prim.name)
    ops.append(entry)
  return {"vars": [int(i) for i in program.var_ids], "inputs": [int(i) for i in program.input_ids],
          "consts": [[int(i), np.asarray(v)] for i, v in program.consts], "out": e.atom(program.out, "the output"),
          "ops": ops}


# ----------------------------------------------------------------------------------------------------------------
# Decoding: the apply function of a saved program.
# ----------------------------------------------------------------------------------------------------------------

def _literal(entry: dict):
  """A literal as ``bind`` takes it, so that the trace holds it as the original did: an array literal as a NumPy array
  of its dtype, a weakly typed scalar as the Python number it canonicalises from. (A literal that does not come back
  the same is caught by the key check of :func:`save`.)"""
  kind, value = entry["lit"], entry["value"]
  if kind == "array":
    return np.asarray(value)
  if kind == "scalar":
    return _python(value)
  if kind == "value":
    return value
  raise ValueError(f"an unknown literal kind {kind!r}")


def _param(value, batch):
  if isinstance(value, (list, tuple)):
    return type(value)(_param(v, batch) for v in value)
  if not isinstance(value, dict):
    return value
  tag = value["$"]
  if tag == "record":
    return _RECORDS[value["type"]](*(_param(v, batch) for v in value["fields"]))
  if tag == "enum":
    return _ENUMS[value["type"]][value["name"]]
  if tag == "dtype":
    return np.dtype(value["name"])
  if tag == "dim":  # a batch-sized dimension: a * batch + c
    return value["a"] * batch + value["c"] if (value["a"], value["c"]) != (1, 0) else batch
  if tag == "typed":
    return value["value"]
  if tag == "scalar":
    return value["value"]
  if tag == "jaxpr":
    return _jaxpr(value, batch)
  raise ValueError(f"an unknown parameter tag {tag!r}")


def _aval(entry: dict, batch):
  return jax.ShapeDtypeStruct(tuple(_param(d, batch) for d in entry["shape"]), np.dtype(entry["dtype"]),
                              weak_type=bool(entry["weak"]))


def _jaxpr(entry: dict, batch):
  """A jaxpr parameter, traced again from its equations."""
  consts = [np.asarray(c) for c in entry["consts"]]

  def fn(*args):
    env = dict(zip(entry["constvars"], consts))
    env.update(zip(entry["invars"], args))
    for eqn in entry["eqns"]:
      prim = PRIMITIVES[eqn["prim"]]
      ins = [_literal(a) if isinstance(a, dict) else env[a] for a in eqn["in"]]
      outs = prim.bind(*ins, **{k: _param(v, batch) for k, v in eqn["params"].items()})
      env.update(zip(eqn["out"], outs if prim.multiple_results else [outs]))
    return [_literal(a) if isinstance(a, dict) else env[a] for a in entry["outvars"]]

  closed = jax.make_jaxpr(fn)(*[_aval(a, batch) for a in entry["in_avals"]])
  return closed if entry["closed"] else closed.jaxpr


class Replay:
  """``apply_fn(variables, x)`` rebuilt from a saved program: a walk over its ops (see the module docstring).

  ``variables`` and ``x`` may be any pytrees with the saved number of array leaves, in the saved order (a loaded
  network's own variables, or the original model's). It returns the program's output: the logits (a final softmax
  the conversion dropped is not part of the program; :attr:`jaxsnn.SpikingNetwork.dropped_final` names it).
  """

  __name__ = "saved_program"

  def __init__(self, saved: dict):
    self.saved = saved
    self.consts = {int(i): np.asarray(v) for i, v in saved["consts"]}

  def __repr__(self):
    return f"Replay({len(self.saved['ops'])} ops)"

  def __call__(self, variables, x):
    s = self.saved
    var_leaves, x_leaves = jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(x)
    if len(var_leaves) != len(s["vars"]) or len(x_leaves) != len(s["inputs"]):
      raise ValueError(f"the saved program takes {len(s['vars'])} variable arrays and {len(s['inputs'])} input "
                       f"arrays; got {len(var_leaves)} and {len(x_leaves)}.")
    batch = np.shape(x_leaves[0])[0]
    env = dict(zip(s["vars"], var_leaves))
    env.update(zip(s["inputs"], x_leaves))
    env.update(self.consts)

    def read(a):
      return _literal(a) if isinstance(a, dict) else env[a]

    for op in s["ops"]:
      ins = [read(a) for a in op["in"]]
      if "site" in op:
        with _scope(op["module"]):
          y = jax.nn.relu(ins[0]) if op["site"] == ir.RELU else qcfs(ins[0], ins[1], int(op["levels"]))
        env[op["out"][0]] = y
        continue
      prim = PRIMITIVES[op["prim"]]
      params = {k: _param(v, batch) for k, v in op["params"].items()}
      with _scope(op.get("max_site", op["scope"])):
        outs = prim.bind(*ins, **params)
      env.update(zip(op["out"], outs if prim.multiple_results else [outs]))
    return read(s["out"])


class _NoScope:
  def __enter__(self):
    return None

  def __exit__(self, *exc):
    return False


def _scope(name: str):
  return jax.named_scope(name) if name else _NoScope()


def decode(saved: dict) -> Replay:
  """The apply function of a saved program (:func:`encode`'s output, as read back).

  Raises:
    ValueError: for a primitive this JAX does not have.
  """
  missing = sorted({op["prim"] for op in saved["ops"] if "prim" in op and op["prim"] not in PRIMITIVES})
  if missing:
    raise ValueError(f"the saved program uses primitives this JAX ({jax.__version__}) does not have: {missing}")
  return Replay(saved)


# ----------------------------------------------------------------------------------------------------------------
# Checks.
# ----------------------------------------------------------------------------------------------------------------

def _specs(tree, batch=None):
  def spec(a):
    shape = tuple(np.shape(a))
    return jax.ShapeDtypeStruct(shape if batch is None else (batch,) + shape[1:], jnp.result_type(a))
  return jax.tree_util.tree_map(spec, tree)


def example_input(input_spec, batch) -> Any:
  """Shape/dtype structs of an input of ``batch`` examples, from a network's ``input_spec``."""
  treedef, spec = input_spec
  return jax.tree_util.tree_unflatten(treedef, [jax.ShapeDtypeStruct((batch,) + tuple(shape), dtype)
                                                for shape, dtype in spec])


def program_key(fn: Callable, variables, input_spec, caller: str, batch: int = CHECK_BATCHES[0]) -> str:
  """:attr:`Program.key` of ``fn`` at ``batch`` examples."""
  return ir.build_program(fn, _specs(variables), example_input(input_spec, batch), caller=caller).key


# Entries that hold value ids (never batch dimensions).
_IDS = frozenset({"in", "out", "vars", "inputs", "consts", "constvars", "invars", "outvars"})


def _merge(a, b, where: str, caller: str, batches=TRACE_BATCHES, ids: bool = False):
  """One saved form from the forms traced at two batch sizes: ints that differ become batch dimensions
  ``{"$": "dim", "a", "c"}``; any other difference is refused, naming where it is."""
  def refuse(what):
    return SaveError(f"{caller}: cannot save the network's program: it depends on the batch size beyond its "
                     f"dimensions ({what} at {where} differs between batch sizes {batches[0]} and {batches[1]}).")

  if type(a) is not type(b):
    raise refuse(f"a {type(a).__name__} against a {type(b).__name__}")
  if isinstance(a, dict):
    if list(a) != list(b):
      raise refuse(f"the entries {sorted(a)} against {sorted(b)}")
    return {k: _merge(a[k], b[k], where if k in ("params", "shape") else f"{where}/{k}", caller, batches,
                      k in _IDS or (ids and k not in ("params",))) for k in a}
  if isinstance(a, (list, tuple)):
    if len(a) != len(b):
      raise refuse(f"a sequence of {len(a)} against one of {len(b)}")
    return type(a)(_merge(x, y, f"{where}[{i}]" if not where.endswith("ops") else _op_name(x, i), caller, batches,
                          ids) for i, (x, y) in enumerate(zip(a, b)))
  if isinstance(a, (np.ndarray, np.generic)):
    if a.dtype != b.dtype or np.shape(a) != np.shape(b) or np.asarray(a).tobytes() != np.asarray(b).tobytes():
      raise refuse("an array")
    return a
  if type(a) is int and a != b and not ids:
    slope, rest = divmod(b - a, batches[1] - batches[0])
    if rest:
      raise refuse(f"the number {a} (against {b})")
    return {"$": "dim", "a": slope, "c": a - slope * batches[0]}
  if repr(a) != repr(b):
    raise refuse(f"the value {a!r} (against {b!r})")
  return a


def _op_name(op, i: int) -> str:
  if isinstance(op, dict) and "prim" in op:
    return f"op {i} ('{op['prim']}', module '{op.get('scope', '')}')"
  if isinstance(op, dict) and "site" in op:
    return f"op {i} ({op['site']} site in module '{op['module']}')"
  return f"op {i}"


def save(fn: Callable, variables, input_spec, caller: str) -> tuple[dict, str]:
  """``(saved program, its key at CHECK_BATCHES[0] examples)`` for a network's apply function, after checking that
  the program rebuilt from the saved form is the original's (same key) at each of :data:`CHECK_BATCHES`.

  Raises:
    SaveError: for what the format cannot hold, or a program that depends on the batch size beyond its dimensions.
  """
  variables = _specs(variables)
  programs = {n: ir.build_program(fn, variables, example_input(input_spec, n), caller=caller)
              for n in sorted(set(TRACE_BATCHES + CHECK_BATCHES))}
  a, b = (programs[n] for n in TRACE_BATCHES)
  if _structure(a) != _structure(b):
    raise SaveError(f"{caller}: cannot save the network's program: it depends on the batch size beyond its "
                    f"dimensions (at batch sizes {TRACE_BATCHES[0]} and {TRACE_BATCHES[1]}: {difference(a, b)}).")
  first, second = encode(a, caller), encode(b, caller)
  saved = _merge(first, second, "the program", caller)
  replay = decode(saved)
  for n in CHECK_BATCHES:
    rebuilt = ir.build_program(replay, variables, example_input(input_spec, n), caller=caller)
    if rebuilt.key != programs[n].key:
      raise SaveError(f"{caller}: cannot save the network's program: rebuilt from its saved form it is another "
                      f"program at batch size {n}: {difference(programs[n], rebuilt)}.")
  return saved, programs[CHECK_BATCHES[0]].key


def _describe(op, params: bool = True) -> str:
  if isinstance(op, ir.Site):
    return f"{op.kind} site '{op.name}'"
  if isinstance(op, ir.MaxSite):
    return f"max site '{op.name}'"
  return f"'{op.prim.name}'" + (f" {dict(op.params)}" if params else "")


def _structure(program: ir.Program) -> list:
  return [_describe(op, params=False) for op in program.ops]


def difference(a: ir.Program, b: ir.Program) -> str:
  """The first difference between two programs, in words (for errors)."""
  describe = _describe

  if len(a.ops) != len(b.ops):
    return f"{len(a.ops)} ops against {len(b.ops)}"
  for i, (x, y) in enumerate(zip(a.ops, b.ops)):
    if describe(x) != describe(y):
      return f"op {i} is {describe(x)} against {describe(y)}"
  return "the ops agree, but their operands, literals, constants or shapes differ"
