"""Flat programs from jaxprs, and the one walker that runs them.

This is the only module of jaxsnn that touches JAX's jaxpr internals (``jax.extend.core`` and the source-info
helpers of ``jax.extend``).

``build_program(fn, variables, x)`` traces ``fn(variables, x)`` to a jaxpr and flattens it into a :class:`Program`:
call-like sub-jaxprs (``jit``, ``custom_jvp_call``, ``custom_vjp_call``, ``checkpoint``, ``closed_call``) are inlined,
``lax.scan`` (``nn.scan``, ``nn.remat_scan``) is unrolled, ``lax.cond`` with a predicate known at trace time is
replaced by its branch, and every activation becomes a :class:`Site`: a ReLU (``max(x, 0)``, which is what
``jax.nn.relu`` and flax's ``nn.relu`` reduce to, or ``jnp.where(x > 0, x, 0)``) or jaxsnn's QCFS primitive. Every
value gets a *kind*:

* ``CONST``: depends on neither the input nor the spikes (weights, BatchNorm's ``rsqrt(var + eps) * scale``);
* ``INPUT``: depends on the input but on no spike (the first layer's current: constant over time);
* ``SPIKE``: depends on spikes; must be computed every step, so the operation producing it must be affine in its
  spiking operands (the registry of :mod:`jaxsnn._src.rules` decides), or be a max of spiking values
  (:class:`MaxSite`).

Which activations become neurons: every activation of a spike-dependent value, and every activation of an input-only
value (the first layer of neurons), except an input-only activation whose result reaches an operation that cannot take
spikes through unweighted ops alone (reshapes, sums, casts: no matmul or convolution in between), such as the
``max(var, 0)`` inside a ``LayerNorm`` on the input, or the ``max`` of a ``jnp.clip`` of the raw input: those are
preprocessing, an ordinary operation computed once per input.

``walk`` interprets the program with pluggable rules for ordinary ops, sites and max sites: the calibration pass, the
ANN reference and both simulation schedules are the same walk with different rules.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import extend as jex
from jax.extend import core as jcore
from jax.extend.core import primitives as P

from jaxsnn._src import rules
from jaxsnn._src.qcfs import qcfs_p
from jaxsnn._src.jitting import jit

CONST, INPUT, SPIKE = 0, 1, 2
OUTPUT = "output"  # key of the output layer in thresholds, stats and spike counts
RELU, QCFS = "relu", "qcfs"
MAX_UNROLL = 256  # longest lax.scan that is unrolled


class Lit(NamedTuple):
  """A literal operand (a Python or numpy scalar baked into the jaxpr)."""

  val: Any


class Op(NamedTuple):
  """One primitive application of the flattened program."""

  prim: Any
  params: dict
  ins: tuple  # of int ids or Lit
  outs: tuple  # of int ids
  where: str  # source line, as JAX summarises it
  scope: str  # flax module path (JAX name stack)

  def bind(self, *args):
    out = self.prim.bind(*args, **self.params)
    return tuple(out) if self.prim.multiple_results else (out,)


class Site(NamedTuple):
  """An activation that becomes a spiking neuron site.

  Attributes:
    name: unique site name (``"<module path>/relu"`` or ``"<module path>/qcfs"``).
    kind: ``"relu"`` or ``"qcfs"``.
    ins: ``(x,)`` for a ReLU, ``(x, threshold)`` for QCFS (its trained lambda, constant in time).
    out: id of the activation.
    levels: QCFS levels L (None for a ReLU).
    where: source line.
    scope: flax module path.
  """

  name: str
  kind: str
  ins: tuple
  out: int
  levels: int | None
  where: str
  scope: str

  @property
  def x(self):
    return self.ins[0]

  @property
  def outs(self) -> tuple:
    return (self.out,)


class MaxSite(NamedTuple):
  """A max of spiking values (max pool, ``jnp.maximum(a, b)``), simulated with the cumulative-max rule."""

  name: str
  op: Op

  @property
  def outs(self) -> tuple:
    return self.op.outs

  @property
  def ins(self) -> tuple:
    return self.op.ins


@dataclasses.dataclass(frozen=True, eq=False)
class Program:
  """A flattened, classified, dead-code-free program.

  Attributes:
    var_ids: ids of the variables' leaves.
    input_ids: ids of the input's leaves.
    consts: ``(id, value)`` of the constants the jaxpr closed over.
    ops: :class:`Op`, :class:`Site` and :class:`MaxSite` in execution order.
    out: the id (or :class:`Lit`) of the single output.
    kinds: id -> CONST / INPUT / SPIKE.
    avals: id -> ``jax.ShapeDtypeStruct``.
    activations: names of activation functions without a spiking form found in the network (GELU, ...), for
      errors.
    dropped: the final per-sample maps of the traced function left out of the program (``("log_softmax",)``): a
      softmax or log_softmax over every axis but the batch axis, which changes no argmax; :attr:`out` is its input,
      the logits.
    key: a digest of everything that decides what the program computes (structure, parameters, literals, site
      names, shapes, dtypes and the values of closed-over constants), and of nothing else (not the Python function
      object, not source lines): equal keys mean equal programs, in this process and (for programs whose
      parameters hold no Python functions) in any other.
  """

  var_ids: tuple
  input_ids: tuple
  consts: tuple
  ops: tuple
  out: Any
  kinds: dict
  avals: dict
  key: str
  activations: tuple = ()
  dropped: tuple = ()

  @property
  def sites(self) -> tuple:
    return tuple(op for op in self.ops if isinstance(op, Site))

  @property
  def max_sites(self) -> tuple:
    return tuple(op for op in self.ops if isinstance(op, MaxSite))

  def kind(self, atom) -> int:
    return CONST if isinstance(atom, Lit) else self.kinds[atom]

  def aval(self, atom):
    if isinstance(atom, Lit):
      return jax.ShapeDtypeStruct(np.shape(atom.val), jnp.result_type(atom.val))
    return self.avals[atom]


class ConversionError(ValueError):
  """Raised when a network contains an operation that has no spiking equivalent."""


@dataclasses.dataclass(frozen=True)
class Traced:
  """A network function identified by what it computes: compares and hashes by :attr:`Program.key` only.

  Compiled functions take it as a static argument, so re-creating an equal ``apply_fn`` (a fresh ``lambda``, a
  notebook cell run again) hits the compilation cache instead of compiling again.
  """

  fn: Callable = dataclasses.field(compare=False)
  key: str

  def __repr__(self):
    return f"Traced({getattr(self.fn, '__name__', type(self.fn).__name__)}, key={self.key[:12]})"


def _is_data(leaf) -> bool:
  return isinstance(leaf, (jax.Array, np.ndarray, np.generic))


class _WithStatics:
  """``fn(variables, x)`` called with the variables' array leaves only: the other leaves (an Equinox module's
  activation functions, sizes, flags) are put back from where they were when :func:`split_variables` ran.

  ``held`` lists the layers the variables hold in lists and tuples (see :func:`_held_layers`), to name sites and
  errors by the layer's index."""

  def __init__(self, fn, treedef, statics, held=()):
    self.fn, self.treedef, self.statics, self.held = fn, treedef, statics, held
    self.__name__ = getattr(fn, "__name__", type(fn).__name__)

  def __call__(self, arrays, x):
    it = iter(jax.tree_util.tree_leaves(arrays))
    leaves = [next(it) if s is _ARRAY else s for s in self.statics]
    return self.fn(jax.tree_util.tree_unflatten(self.treedef, leaves), x)


_ARRAY = object()  # marks an array leaf's place in _WithStatics.statics


def split_variables(fn: Callable, variables) -> tuple[Callable, Any]:
  """``(fn, arrays)``: the variables as data (array leaves; every other leaf replaced by None) and a function of them.

  Equinox modules (and other pytrees) carry leaves that are not arrays (activation functions, ints, flags); they are
  part of the network's definition, not of its data: they are closed over, the arrays stay the data of the
  :class:`SpikingNetwork`. Variables made of arrays alone are returned as they are.
  """
  leaves, treedef = jax.tree_util.tree_flatten(variables)
  if all(_is_data(leaf) for leaf in leaves):
    return fn, variables
  statics = [_ARRAY if _is_data(leaf) else leaf for leaf in leaves]
  arrays = jax.tree_util.tree_unflatten(treedef, [leaf if _is_data(leaf) else None for leaf in leaves])
  return _WithStatics(fn, treedef, statics, _held_layers(variables)), arrays


def _key_name(k) -> str:
  return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))


def _call_names(layer) -> frozenset:
  """The names under which a layer's code shows in a traceback or a jaxpr: a function's own name (``relu``,
  ``log_softmax``: jax's jitted and custom_jvp functions carry it into the jaxpr too), or the qualified name of the
  ``__call__`` a module instance runs (``Conv.__call__`` for an Equinox ``Conv2d``)."""
  if layer is None or _is_data(layer) or isinstance(layer, (bool, int, float, complex, str, bytes)):
    return frozenset()
  name = getattr(layer, "__name__", None)
  if isinstance(name, str):
    return frozenset({name})
  cls = next((c for c in type(layer).__mro__ if "__call__" in vars(c)), None)
  return frozenset() if cls is None or cls is object else frozenset({f"{cls.__qualname__}.__call__"})


def _held_layers(variables, max_depth: int = 32) -> tuple:
  """``((list path, index, names, is a bare function), ...)``: every callable the variables hold in a list or tuple
  (Equinox's ``layers[5]``: a module, an ``eqx.nn.Lambda``, or a bare function such as ``jax.nn.relu``), with the
  names under which its code shows (:func:`_call_names`), in the order of the pytree."""
  held = []

  def visit(node, keys, depth):
    if depth > max_depth:
      return
    children = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda n: n is not node)[0]
    if len(children) == 1 and children[0][1] is node:
      return  # a leaf
    for path, child in children:
      key = path[0]
      if isinstance(key, jax.tree_util.SequenceKey):
        names = _call_names(child)
        if names:
          held.append(("/".join(keys), key.idx, names, not any(n.endswith(".__call__") for n in names)))
      visit(child, keys + (_key_name(key),), depth + 1)

  visit(variables, (), 0)
  return tuple(held)


def trace(fn: Callable, variables, x, *, caller: str = "jaxsnn") -> tuple["Program", Traced]:
  """Builds the program of ``fn(variables, x)`` and the :class:`Traced` handle that identifies it."""
  program = build_program(fn, variables, x, caller=caller)
  return program, Traced(fn, program.key)


# ----------------------------------------------------------------------------------------------------------------
# Tracing and flattening.
# ----------------------------------------------------------------------------------------------------------------

# Call-like primitives whose sub-jaxpr is inlined, and the parameter that holds it.
_INLINE = {P.jit_p: "jaxpr", P.closed_call_p: "call_jaxpr", P.call_p: "call_jaxpr",
           P.custom_jvp_call_p: "call_jaxpr", P.custom_vjp_call_p: "call_jaxpr", P.remat_p: "jaxpr"}
_PASS_ZERO = (P.broadcast_in_dim_p, P.reshape_p, P.convert_element_type_p, P.copy_p)
# Comparisons that make jnp.where(x > 0, x, 0) a ReLU: (primitive, position of x, position of the zero).
_POSITIVE_TESTS = {P.gt_p: (0, 1), P.ge_p: (0, 1), P.lt_p: (1, 0), P.le_p: (1, 0)}
_TRANSFORM = re.compile(r"[\w.]*\(.*\)")  # a name-stack entry of a transformation, e.g. "vmap(eqx.nn.MLP)"
_SMALL = 64  # largest constant (in elements) evaluated at trace time to resolve a lax.cond predicate


def _as_jaxpr(j):
  if isinstance(j, jcore.ClosedJaxpr):
    return j.jaxpr, j.consts
  if isinstance(j, jcore.Jaxpr):
    return j, ()
  return None


def _value(val) -> np.ndarray | None:
  try:
    return np.asarray(val)
  except Exception:  # a tracer: not a known value  # noqa: BLE001
    return None


def _all_equal(val, target: float) -> bool:
  arr = _value(val)
  return arr is not None and arr.size > 0 and bool(np.all(arr == target))


def _frame_names(source_info) -> frozenset:
  """The names of the functions (outside JAX itself) on the Python stack when an equation was traced
  (``Linear.__call__``, ``Sequential.__call__``, ...)."""
  frames = getattr(getattr(source_info, "traceback", None), "frames", None) or ()
  return frozenset(f.function_name for f in frames if "/jax/" not in f.file_name.replace("\\", "/"))


class _Builder:
  def __init__(self, caller: str, held: tuple = ()):
    self.caller = caller
    self.held = held  # layers held in lists (see _held_layers): if any, the traceback names of every op are kept
    self.frames: frozenset = frozenset()  # traceback names of the equation being expanded
    self.outer_frames: frozenset | None = None  # those of the outermost call being inlined (fresh, not cached)
    self.frames_of: dict = {}  # id -> traceback names of the op that made it
    self.ops: list = []
    self.consts: list = []
    self.avals: dict = {}
    self.zeros: set = set()  # ids known to hold zeros (broadcasts of a literal 0)
    self.positive_tests: dict = {}  # id of a boolean x > 0 -> x
    self.producer: dict = {}  # id -> the Op that made it
    self.const_values: dict = {}  # id -> value of a closed-over constant
    self.next_id = 0
    self.functions: list = []  # names of the jitted / custom_jvp functions being inlined (innermost last)
    self.function_of: dict = {}  # id -> "outer/inner" names of the functions that computed it

  def fresh(self, aval) -> int:
    i = self.next_id
    self.next_id += 1
    self.avals[i] = jax.ShapeDtypeStruct(aval.shape, aval.dtype)
    return i

  def aval(self, atom):
    if isinstance(atom, Lit):
      return jax.ShapeDtypeStruct(np.shape(atom.val), jnp.result_type(atom.val))
    return self.avals[atom]

  def is_zero(self, atom) -> bool:
    return _all_equal(atom.val, 0) if isinstance(atom, Lit) else atom in self.zeros

  def is_minus_inf(self, atom) -> bool:
    if isinstance(atom, Lit):
      return _all_equal(atom.val, -np.inf)
    return atom in self.const_values and _all_equal(self.const_values[atom], -np.inf)

  def known(self, atom, depth: int = 0):
    """The value of ``atom`` if it is known when the network is traced (literals and small constants), else None."""
    if isinstance(atom, Lit):
      return _value(atom.val)
    if atom in self.const_values:
      value = self.const_values[atom]
      return _value(value) if np.size(value) <= _SMALL else None
    op = self.producer.get(atom)
    if op is None or depth > 32 or any(np.prod(self.avals[o].shape, dtype=np.int64) > _SMALL for o in op.outs):
      return None
    args = [self.known(a, depth + 1) for a in op.ins]
    if any(a is None for a in args):
      return None
    try:
      with jax.ensure_compile_time_eval():
        outs = op.bind(*args)
    except Exception:  # noqa: BLE001  (an op that cannot run eagerly: simply not known)
      return None
    return _value(outs[op.outs.index(atom)])

  def traced(self, f, atoms, scope, where) -> list:
    """Inlines the jaxpr of ``f`` applied to ``atoms`` (used to slice and stack the iterations of a scan)."""
    closed = jax.make_jaxpr(f)(*[self.aval(a) for a in atoms])
    return self.inline(closed.jaxpr, closed.consts, list(atoms), scope, where)

  def emit(self, eqn, ins, where, scope) -> list:
    prim = eqn.primitive
    if prim is P.max_p and len(ins) == 2:
      for keep, other in ((0, 1), (1, 0)):
        if self.is_minus_inf(ins[other]) and self.aval(ins[keep]).shape == tuple(eqn.outvars[0].aval.shape):
          return [ins[keep]]  # max(x, -inf) = x (softmax's stabiliser): no operation
    outs = [self.fresh(v.aval) for v in eqn.outvars]
    op = Op(prim, dict(eqn.params), tuple(ins), tuple(outs), where, scope)
    functions = self.functions + [f for f in [_library_function(eqn.source_info)] if f]
    if functions:
      for o in outs:
        self.function_of[o] = "/".join(functions)
    if self.held:
      for o in outs:
        self.frames_of[o] = self.frames
    if prim in _PASS_ZERO and self.is_zero(ins[0]):
      self.zeros.add(outs[0])
    if prim in _POSITIVE_TESTS:
      x_pos, zero_pos = _POSITIVE_TESTS[prim]
      if self.is_zero(ins[zero_pos]) and not self.is_zero(ins[x_pos]):
        self.positive_tests[outs[0]] = ins[x_pos]
    site = None
    if prim is P.max_p and len(ins) == 2:
      data = [a for a in ins if not self.is_zero(a)]
      if len(data) == 1 and self.aval(data[0]).shape == self.avals[outs[0]].shape:  # max(x, 0): a ReLU
        site = Site("", RELU, (data[0],), outs[0], None, where, scope)
    elif prim is P.select_n_p and len(ins) == 3 and not isinstance(ins[0], Lit):
      x = self.positive_tests.get(ins[0])  # jnp.where(x > 0, x, 0): a ReLU
      if x is not None and self.is_zero(ins[1]) and ins[2] == x:
        site = Site("", RELU, (x,), outs[0], None, where, scope)
    elif prim is qcfs_p:
      site = Site("", QCFS, tuple(ins), outs[0], int(eqn.params["levels"]), where, scope)
    self.ops.append(site if site is not None else op)
    for o in outs:
      self.producer[o] = op
    return outs

  def inline(self, jaxpr, consts, in_atoms, scope: str, where: str) -> list:
    env: dict = {}

    def read(v):
      return Lit(v.val) if isinstance(v, jcore.Literal) else env[v]

    for v, c in zip(jaxpr.constvars, consts):
      env[v] = self.const(v.aval, c)
    for v, a in zip(jaxpr.invars, in_atoms):
      env[v] = a
    for eqn in jaxpr.eqns:
      ins = [read(v) for v in eqn.invars]
      # The name stack's module scopes (Flax linen's module paths); transformations (``vmap(...)``) are no modules.
      inner = "/".join(part for part in str(eqn.source_info.name_stack).split("/")
                       if part and not _TRANSFORM.fullmatch(part))
      eqn_scope = "/".join(s for s in (scope, inner) if s)
      eqn_where = jex.source_info_util.summarize(eqn.source_info) or where
      if self.held:
        # The equations inside a jitted function may come from JAX's trace cache, with the traceback of an earlier
        # call: the outermost call's own traceback says where this one was made.
        self.frames = self.outer_frames if self.outer_frames is not None else _frame_names(eqn.source_info)
      outs = self.expand(eqn, ins, eqn_scope, eqn_where)
      for v, o in zip(eqn.outvars, outs):
        if not isinstance(v, jcore.DropVar):
          env[v] = o
    return [read(v) for v in jaxpr.outvars]

  def expand(self, eqn, ins, scope, where) -> list:
    """Inlines call-like equations, unrolls scans, picks known cond branches; emits everything else."""
    outer = self.outer_frames
    if outer is None:
      self.outer_frames = self.frames
    try:
      return self._expand(eqn, ins, scope, where)
    finally:
      self.outer_frames = outer

  def _expand(self, eqn, ins, scope, where) -> list:
    prim = eqn.primitive
    if prim in _INLINE:
      sub = _as_jaxpr(eqn.params.get(_INLINE[prim]))
      if sub is not None and len(sub[0].invars) == len(ins):
        name = eqn.params.get("name")
        self.functions.append(str(getattr(name, "__name__", name)) if name else prim.name)
        try:
          return self.inline(sub[0], sub[1], ins, scope, where)
        finally:
          self.functions.pop()
    if prim is P.cond_p:
      index = self.known(ins[0])
      if index is not None:
        branches = eqn.params["branches"]
        chosen = branches[int(np.clip(int(index), 0, len(branches) - 1))]
        return self.inline(chosen.jaxpr, chosen.consts, ins[1:], scope, where)
    if prim is P.scan_p and 0 < eqn.params["length"] <= MAX_UNROLL:
      return self.unroll_scan(eqn, ins, scope, where)
    return self.emit(eqn, ins, where, scope)

  def unroll_scan(self, eqn, ins, scope, where) -> list:
    p = eqn.params
    n_consts, n_carry, length = p["num_consts"], p["num_carry"], p["length"]
    consts, carry, xs = ins[:n_consts], list(ins[n_consts:n_consts + n_carry]), ins[n_consts + n_carry:]
    body, body_consts = _as_jaxpr(p["jaxpr"])
    ys = {}
    for i in (reversed(range(length)) if p["reverse"] else range(length)):
      x_i = [self.traced(lambda a, i=i: a[i], [x], scope, where)[0] for x in xs]
      outs = self.inline(body, body_consts, list(consts) + carry + x_i, f"{scope}/iteration_{i}".lstrip("/"), where)
      carry, ys[i] = outs[:n_carry], outs[n_carry:]
    stacked = [self.traced(lambda *a: jnp.stack(a), [ys[i][k] for i in range(length)], scope, where)[0]
               for k in range(len(eqn.outvars) - n_carry)]
    return carry + stacked

  def const(self, aval, value) -> int:
    i = self.fresh(aval)
    self.consts.append((i, value))
    self.const_values[i] = value
    if _all_equal(value, 0):
      self.zeros.add(i)
    return i


def _spec(a):
  return jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a))


def _dead_code_free(ops: list, out) -> list:
  live = {out} if not isinstance(out, Lit) else set()
  kept = []
  for op in reversed(ops):
    if any(o in live for o in op.outs):
      kept.append(op)
      live.update(a for a in op.ins if not isinstance(a, Lit))
  kept.reverse()
  return kept


def _as_op(site: Site, dtype) -> Op:
  """An activation that stays an ordinary operation (on constants, or on the input only)."""
  if site.kind == QCFS:
    return Op(qcfs_p, {"levels": site.levels}, site.ins, site.outs, site.where, site.scope)
  return Op(P.max_p, {}, (site.x, Lit(np.zeros((), dtype))), site.outs, site.where, site.scope)


# Activation functions that have no spiking form, by the name under which jax (jax.nn, flax, equinox) jits them.
_ACTIVATIONS = {
    "gelu": "GELU", "silu": "SiLU (swish)", "swish": "SiLU (swish)", "softplus": "softplus", "elu": "ELU",
    "selu": "SELU", "celu": "CELU", "leaky_relu": "leaky ReLU", "relu6": "ReLU6 (a clipped ReLU)",
    "hard_tanh": "hard tanh", "hard_sigmoid": "hard sigmoid", "hard_silu": "hard SiLU", "hard_swish": "hard swish",
    "sigmoid": "sigmoid", "log_sigmoid": "log-sigmoid", "tanh": "tanh", "softmax": "softmax",
    "log_softmax": "log-softmax", "mish": "mish", "glu": "GLU", "squareplus": "squareplus", "sparse_plus": "sparse plus",
    "standardize": "standardisation (a normalisation with batch or feature statistics)",
}


_LIBRARIES = ("/jax/", "/flax/", "/equinox/", "/haiku/")


def _library_function(source_info) -> str | None:
  """The activation function of jax / flax / equinox whose code emitted an equation, from its traceback."""
  frames = getattr(getattr(source_info, "traceback", None), "frames", None) or ()
  for frame in frames:
    if frame.function_name in _ACTIVATIONS and any(lib in frame.file_name for lib in _LIBRARIES):
      return frame.function_name
  return None


class Context(NamedTuple):
  """Where values come from, for names and error messages: the function that computed each value, the variables'
  paths, and each value's producing op."""

  function_of: dict  # id -> names of the enclosing jitted functions
  var_paths: dict  # id of a variable leaf -> its module path ("layers/0"), from the variables' pytree paths
  producer: dict  # id -> op
  frames_of: dict | None = None  # id -> traceback names of the op that made it (kept where `held` is not empty)
  held: tuple = ()  # layers held in lists: ((list path, index, names, is a bare function), ...): _held_layers

  def module(self, op) -> str:
    """The module an op belongs to: for an op of a layer held in a list (Equinox: ``layers[5]``, a module or a bare
    function such as ``jax.nn.relu``), that layer's path (``layers/5``); else its name stack (Flax linen's module
    path; Equinox names some of its layers' scopes, ``eqx.nn.Dropout``); else the path of the nearest weight it
    reads (an NNX / Equinox / plain-pytree model: ``layers/4``); else ""."""
    if self.held:
      upstream = self.nearest_weight(op.ins)
      return self.held_layer(op, upstream) or op.scope or upstream
    return op.scope or self.nearest_weight(op.ins)

  def held_layer(self, op, upstream: str) -> str:
    """The path of the list-held layer whose code made ``op``, or "".

    A layer matches when its function's name (``relu``) or its ``__call__`` (``Linear.__call__``) is among the
    functions that made the op. Of the matching layers of one list, the op belongs to the first at or after the
    layer of the nearest weight it reads (``upstream``), with no layer holding weights in between: a list runs in
    order, and a layer cannot see past the next weighted one. An op that no layer's name matches (jax.nn's jitted
    functions leave no name in a vmapped trace: ``jax.nn.sigmoid`` is a bare ``logistic``) belongs to the bare
    function between its upstream layer and the next weighted one, if there is exactly one. The deepest list wins
    (a list inside a list layer).
    """
    if not self.held:
      return ""
    o = op.outs[0]
    names = set((self.frames_of or {}).get(o, ())) | set(self.function_of.get(o, "").split("/"))
    in_layer = any(names & layer_names for _, _, layer_names, _ in self.held)
    by_prefix: dict = {}
    for prefix, index, layer_names, bare in self.held:
      if in_layer and not names & layer_names or not in_layer and not bare:
        continue
      start = _index_in(prefix, upstream)
      if start is None or index < start or not in_layer and index == start:
        continue
      weighted = {_index_in(prefix, path) for path in self.var_paths.values()} - {None}
      if not any(start < k < index for k in weighted):
        by_prefix.setdefault(prefix, []).append(index)
    for prefix in sorted(by_prefix, key=lambda p: -(p.count("/") + bool(p))):
      indices = sorted(by_prefix[prefix])
      if in_layer or len(indices) == 1:
        return "/".join(s for s in (prefix, str(indices[0])) if s)
    return ""

  def nearest_weight(self, atoms, depth: int = 64) -> str:
    """The module path of the closest variable a contraction applies to the values ``atoms`` come from."""
    seen, frontier = set(), [a for a in atoms if not isinstance(a, Lit)]
    for _ in range(depth):
      nxt = []
      for a in frontier:
        if a in seen:
          continue
        seen.add(a)
        if a in self.var_paths:
          return self.var_paths[a]
        op = self.producer.get(a)
        if op is None:
          continue
        inner = op.op if isinstance(op, MaxSite) else op
        if isinstance(inner, Op) and rules.is_contraction(inner.prim):
          found = self.weight_of(inner)
          if found:
            return found
        nxt.extend(b for b in inner.ins if not isinstance(b, Lit))
      if not nxt:
        return ""
      frontier = nxt
    return ""

  def weight_of(self, op, depth: int = 8) -> str:
    """The module path of a variable that reaches an operand of ``op`` through ops on constants alone."""
    frontier = [a for a in op.ins if not isinstance(a, Lit)]
    for _ in range(depth):
      nxt = []
      for a in frontier:
        if a in self.var_paths:
          return self.var_paths[a]
        prod = self.producer.get(a)
        if isinstance(prod, Op) and not rules.is_contraction(prod.prim):
          nxt.extend(b for b in prod.ins if not isinstance(b, Lit))
      frontier = nxt
    return ""

  def activation(self, op) -> str | None:
    """The name of the activation function (jax.nn.gelu, ...) an op is part of, if it is a known one."""
    for name in reversed(self.function_of.get(op.outs[0], "").split("/")):
      if name in _ACTIVATIONS:
        return _ACTIVATIONS[name]
    return None


def _index_in(prefix: str, path: str) -> int | None:
  """The index of the element of the list at ``prefix`` that module ``path`` lies in (``layers``, ``layers/4/x`` ->
  4); -1 for no module (""); None if ``path`` is not in that list."""
  if not path:
    return -1
  head = f"{prefix}/" if prefix else ""
  if not path.startswith(head):
    return None
  first = path[len(head):].split("/")[0]
  return int(first) if first.isdigit() else None


def _module_path(path) -> str:
  """``"layers/0"`` for the path of a leaf ``.layers[0].weight`` (the parameter's own name and NNX's ``.value``
  dropped)."""
  keys = [_key_name(k) for k in path]
  while keys and keys[-1] in ("value", "raw_value"):
    keys.pop()
  keys = keys[:-1]  # the parameter's own name (kernel, weight, bias, scale, ...)
  if keys and keys[0] in ("params", "batch_stats"):  # a linen variables dict: the collection is no module
    keys = keys[1:]
  return "/".join(keys)


def _error(caller, op, why, hint, context: Context | None = None) -> ConversionError:
  module = context.module(op) if context is not None else op.scope
  activation = context.activation(op) if context is not None else None
  if activation in ("softmax", "log-softmax"):
    hint = (f"{activation} inside the network has no spiking form; jaxsnn drops a softmax or log_softmax only as the "
            f"network's last operation, over every axis but the batch axis (it changes no argmax there): end "
            f"apply_fn with it, or leave it out")
  elif activation is not None:
    hint = (f"{activation} has no spiking form: only ReLU activations (and jaxsnn's QCFS) become neurons; train the "
            f"ANN with relu in its place")
  return ConversionError(
      f"{caller}: primitive '{op.prim.name}' {why}, so it has no spiking equivalent.\n"
      f"  at: {op.where or 'unknown source line'}\n  in module: {module or '(top level)'}\n  hint: {hint}.")


def _classify(kept: list, base_kinds: dict, avals: dict, caller: str, context: Context) -> tuple[list, dict]:
  """Kinds of every value, which activations are neurons, and validation of every op on spiking values.

  Activations of input-only values are neurons unless their result feeds (through unweighted ops only) an operation
  that cannot take spikes; those are demoted to ordinary ops and the classification runs again (a fixpoint: each
  round demotes at least one).
  """
  demoted: set = set()
  first_error = None  # what the first demotion got round: raised if, in the end, no neuron is left
  while True:
    kinds = dict(base_kinds)
    kind_of = lambda a: CONST if isinstance(a, Lit) else kinds[a]  # noqa: E731
    direct: dict = {}  # id -> positions in `kept` of input-only sites whose spikes reach it through unweighted ops
    restart = False
    for pos, op in enumerate(kept):
      if isinstance(op, Site) and pos not in demoted:
        x_kind = kind_of(op.x)
        if op.kind == QCFS and kind_of(op.ins[1]) != CONST:
          raise ConversionError(f"{caller}: the QCFS activation at {op.where} has a threshold that depends on the "
                                "data; it must be a parameter (constant in time).")
        if x_kind != CONST:
          kinds[op.out] = SPIKE
          direct[op.out] = frozenset({pos}) if x_kind == INPUT else frozenset()
          continue
      ins = op.ins
      in_kind = max((kind_of(a) for a in ins), default=CONST)
      spiking_ins = [a for a in ins if kind_of(a) == SPIKE]
      if in_kind == SPIKE:
        why = rules.why_not_spiking(op.prim, op.params, [kind_of(a) == SPIKE for a in ins])
        if why is not None:
          culprits = frozenset().union(*(direct.get(a, frozenset()) for a in spiking_ins))
          if culprits:
            demoted |= culprits
            first_error = first_error or _error(caller, op, why, rules.hint(op.prim), context)
            restart = True
            break
          raise _error(caller, op, why, rules.hint(op.prim), context)
      reach = frozenset()
      if isinstance(op, Op) and rules.is_reshaping(op.prim):
        reach = reach.union(*(direct.get(a, frozenset()) for a in spiking_ins))
      for o in op.outs:
        kinds[o] = in_kind
        if reach:
          direct[o] = reach
    if not restart:
      break
  if first_error is not None and not any(isinstance(op, Site) and pos not in demoted and kinds[op.out] == SPIKE
                                         for pos, op in enumerate(kept)):
    raise first_error  # demoting left nothing to spike: the network itself does not convert

  # Final op list: neurons and max sites named, everything else an ordinary op.
  ops, used = [], set()

  def unique(base: str) -> str:
    name, k = base, 1
    while name in used:
      name, k = f"{base}_{k}", k + 1
    used.add(name)
    return name

  for pos, op in enumerate(kept):
    if isinstance(op, Site):
      if kinds[op.out] == SPIKE and pos not in demoted:
        shape = avals[op.x].shape
        if len(shape) < 1:
          raise ConversionError(f"{caller}: the activation at {op.where} acts on a scalar; sites need a batch axis.")
        ops.append(op._replace(name=unique("/".join(s for s in (context.module(op), op.kind) if s))))
      else:
        ops.append(_as_op(op, avals[op.out].dtype))
      continue
    if kinds[op.outs[0]] == SPIKE and rules.is_max(op.prim):
      ops.append(MaxSite(unique("/".join(s for s in (context.module(op), op.prim.name) if s)), op))
      continue
    ops.append(op)
  return ops, kinds


def build_program(fn: Callable, variables, x, *, caller: str = "jaxsnn", fold: bool = False) -> Program:
  """Traces ``fn(variables, x)`` and returns its flattened, classified :class:`Program`.

  Args:
    fn: the ANN's apply function.
    variables: a pytree of arrays (or shape/dtype structs).
    x: the input pytree; every leaf has a leading batch axis.
    caller: public function name used to prefix error messages.
    fold: fold the constant affine chain after each spiking matmul / convolution (bias, BatchNorm) into its kernel
      and one bias (:func:`fold_affine`), for the simulator. The ANN walks (calibration, reference) never fold.

  Raises:
    ConversionError: for a primitive that acts non-affinely on spiking values, or an output that is not one array.
  """
  var_leaves, _ = jax.tree_util.tree_flatten(variables)
  var_paths = [_module_path(path) for path, _ in jax.tree_util.tree_flatten_with_path(variables)[0]]
  x_leaves, _ = jax.tree_util.tree_flatten(x)
  try:
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(
        jax.tree_util.tree_map(_spec, variables), jax.tree_util.tree_map(_spec, x))
  except Exception as e:  # the user's model failed on this input: say so, with the input's shapes
    if isinstance(e, ConversionError) or str(e).startswith(caller + ":"):
      raise
    shapes = ", ".join(f"{tuple(np.shape(leaf))} {jnp.result_type(leaf)}" for leaf in x_leaves)
    raise ValueError(f"{caller}: apply_fn(variables, x) fails on an input batch of shape {shapes}: "
                     f"{type(e).__name__}: {e}. Check that the batches hold the inputs the model was built for (shape, "
                     "dtype, normalisation).") from e
  out_leaves = jax.tree_util.tree_leaves(out_shape)
  if len(out_leaves) != 1:
    raise ConversionError(
        f"{caller}: the network must return one array (the logits); it returned {len(out_leaves)} arrays "
        f"with structure {jax.tree_util.tree_structure(out_shape)}. Wrap apply_fn to select the logits.")

  b = _Builder(caller, fn.held if isinstance(fn, _WithStatics) else ())
  jaxpr = closed.jaxpr
  var_ids = tuple(b.fresh(v.aval) for v in jaxpr.invars[: len(var_leaves)])
  input_ids = tuple(b.fresh(v.aval) for v in jaxpr.invars[len(var_leaves):])
  assert len(input_ids) == len(x_leaves)
  (out,) = b.inline(jaxpr, closed.consts, list(var_ids) + list(input_ids), "", "")
  kept = _dead_code_free(b.ops, out)
  context = Context(b.function_of, {i: p for i, p in zip(var_ids, var_paths) if p},
                    {o: op for op in kept for o in op.outs}, b.frames_of, b.held)
  _check_random(kept, input_ids, caller, context)
  out, dropped = _final_map(kept, out, b.function_of, b.avals, caller)
  if dropped:
    kept = _dead_code_free(b.ops, out)
    context = context._replace(producer={o: op for op in kept for o in op.outs})
  live_consts = {a for op in kept for a in op.ins if not isinstance(a, Lit)} | {out}
  consts = tuple((i, v) for i, v in b.consts if i in live_consts)
  base = {i: CONST for i in var_ids}
  base.update({i: INPUT for i in input_ids})
  base.update({i: CONST for i, _ in consts})
  ops, kinds = _classify(kept, base, b.avals, caller, context)
  if fold:
    ops = fold_affine(ops, kinds, b.avals, out)
  key = _program_key(ops, out, var_ids, input_ids, consts, kinds, b.avals)
  activations = tuple(sorted({context.activation(op) for op in kept if isinstance(op, Op)} - {None}))
  return Program(var_ids=var_ids, input_ids=input_ids, consts=consts, ops=tuple(ops), out=out, kinds=kinds,
                 avals=b.avals, key=key, activations=activations, dropped=dropped)


# Primitives that draw or handle random numbers (jax.random's keys and bits, XLA's generators).
_RANDOM = frozenset({"random_bits", "random_seed", "random_wrap", "random_unwrap", "random_split", "random_fold_in",
                     "random_clone", "random_gamma", "threefry2x32", "rng_bit_generator", "rng_uniform"})
_DRAWS = ("random_bits", "threefry2x32", "rng_bit_generator", "rng_uniform", "random_gamma")  # those that draw
RANDOM_HINT = ("call the model in eval mode: deterministic dropout, e.g. model.apply(v, x, train=False) (Flax linen), "
               "model.eval() before nnx.split (Flax NNX), eqx.nn.inference_mode(model) (Equinox); no jax.random "
               "inside apply_fn")


def _random_in(prim, params, depth: int = 0) -> list:
  """Names of the random primitives ``prim`` is or runs in its sub-jaxprs (a lax.cond's branches, a while's body)."""
  found = [prim.name] if prim.name in _RANDOM else []
  if depth > 16:
    return found
  stack = list(params.values())
  while stack:
    value = stack.pop()
    if isinstance(value, (tuple, list)):
      stack.extend(value)
      continue
    sub = _as_jaxpr(value)
    if sub is not None:
      for eqn in sub[0].eqns:
        found.extend(n for n in _random_in(eqn.primitive, eqn.params, depth + 1) if n not in found)
  return found


def _check_random(kept: list, input_ids, caller: str, context: Context) -> None:
  """Random numbers the output depends on (train-mode dropout, noise) are an error: a traced draw is one fixed
  sample, so the SNN would repeat one dropout mask at every step and for every input, converting silently into a
  network that is neither the train-mode nor the eval-mode ANN."""
  found = [(op, names) for op in kept if isinstance(op, Op) for names in [_random_in(op.prim, op.params)] if names]
  if not found:
    return
  op, names = next(((op, n) for op, n in found if any(d in n for d in _DRAWS)), found[0])
  name = next((d for d in _DRAWS if d in names), names[0])
  inside = f" (inside '{op.prim.name}')" if op.prim.name != name else ""
  raise ConversionError(
      f"{caller}: primitive '{name}'{inside} draws random numbers inside the network: traced once, it is one fixed "
      f"draw (e.g. one dropout mask) that the SNN would repeat at every step and for every input, so it has no "
      f"spiking equivalent.\n  at: {op.where or 'unknown source line'}\n  in module: "
      f"{_random_module(op, kept, input_ids, context) or '(top level)'}\n  hint: {RANDOM_HINT}.")


def _random_module(op: Op, kept: list, input_ids, context: Context) -> str:
  """The module of a random op: the list-held layer (Equinox's ``layers[2]``, a dropout) of the op where its draw
  meets the data; else its name stack (Flax linen); else the module of the random key variable it reads (NNX: the
  module whose ``rngs`` hold it); else the module of the op where its draw meets the data."""
  meeting = _where_draw_meets_data(op, kept, input_ids)
  if context.held and meeting is not None:
    held = context.held_layer(meeting, context.nearest_weight(meeting.ins))
    if held:
      return held
  if op.scope:
    return op.scope
  parts = context.nearest_weight(op.ins).split("/")
  if "rngs" in parts and parts.index("rngs") > 0:
    return "/".join(parts[:parts.index("rngs")])
  return context.module(meeting) if meeting is not None else ""


def _where_draw_meets_data(op: Op, kept: list, input_ids):
  """The first op that reads both a value drawn from ``op`` and one that depends on the input (None if none)."""
  drawn, data = set(op.outs), set(input_ids)
  for other in kept:
    inner = other.op if isinstance(other, MaxSite) else other
    ins = [a for a in inner.ins if not isinstance(a, Lit)]
    if any(a in drawn for a in ins):
      if any(a in data for a in ins):
        return other
      drawn.update(inner.outs)
    elif any(a in data for a in ins):
      data.update(inner.outs)
  return None


# Final per-sample maps that change no argmax, by the name under which jax.nn (flax, equinox and haiku call it)
# traces them; the reductions of each must normalise over every axis but the batch axis.
_FINAL_MAPS = ("softmax", "log_softmax")


def _final_map(kept: list, out, function_of: dict, avals: dict, caller: str) -> tuple[Any, tuple]:
  """``(logits, ("log_softmax",))`` if the network ends in a softmax or log_softmax over every axis but the batch
  axis, else ``(out, ())``.

  Such a map changes no argmax of the output (the readout's argmax is over every axis but the batch axis), and has
  no spiking form: the SNN reads out its input, the logits. It is recognised by the name jax.nn gives it in the
  jaxpr (``jit[name=log_softmax]``) or in its traceback, never by guessing at ``exp`` and ``log``; its ops must form
  the tail of the program with one input of the output's shape.

  Raises:
    ConversionError: for a final softmax that would change the argmax (over the batch axis, or over some of the
      non-batch axes only), or one of more than one value.
  """
  def name_of(atom):
    if isinstance(atom, Lit):
      return None
    return next((n for n in reversed(function_of.get(atom, "").split("/")) if n in _FINAL_MAPS), None)

  name = name_of(out)
  producer = {o: op for op in kept if isinstance(op, Op) for o in op.outs}
  if name is None or out not in producer:
    return out, ()
  region, inputs, seen, stack = [], set(), set(), [out]
  while stack:
    atom = stack.pop()
    if isinstance(atom, Lit) or atom in seen:
      continue
    seen.add(atom)
    op = producer.get(atom)
    if op is None or name_of(atom) is None:
      inputs.add(atom)
      continue
    region.append(op)
    stack.extend(op.ins)
  shape = tuple(d if isinstance(d, int) else str(d) for d in avals[out].shape)
  axes = set()
  for op in region:
    if op.prim in _REDUCTIONS:
      reduced = op.params[_REDUCTIONS[op.prim]]
      axes |= set(reduced if isinstance(reduced, (tuple, list)) else [reduced])
  axes = tuple(sorted(int(a) for a in axes))
  leave_out = ("leave it out of apply_fn (apply it to the SNN's output if you need it; jaxsnn's readout and "
               "accuracy take the argmax over every axis but the batch axis)")
  if len(inputs) != 1 or avals[next(iter(inputs))].shape != avals[out].shape:
    raise ConversionError(
        f"{caller}: the network ends in {name} of {len(inputs)} values (a where= mask, or a reshape inside it), not "
        f"of one array of its output's shape {shape}: jaxsnn drops a final softmax or log_softmax of the logits "
        f"only; {leave_out}.")
  if axes != tuple(range(1, len(shape))):
    raise ConversionError(
        f"{caller}: the network ends in {name} over axes {axes} of its output of shape {shape}: jaxsnn drops a "
        f"final softmax or log_softmax only when it normalises over every axis but the batch axis (axis 0), where "
        f"it changes no argmax; over the batch it mixes examples, over some axes only it changes the argmax. "
        f"Normalise over axes {tuple(range(1, len(shape)))}, or {leave_out}.")
  return next(iter(inputs)), (name,)


# ----------------------------------------------------------------------------------------------------------------
# Folding constant affine chains into the contractions.
# ----------------------------------------------------------------------------------------------------------------

_CHAIN = {P.add_p: "add", P.sub_p: "sub", P.mul_p: "mul", P.div_p: "div"}


def _feature_axes(op: Op, shape_of) -> tuple[int, int] | None:
  """(kernel axis, output axis) of the output features of a contraction with a constant kernel on the right, if
  the output features are the output's last axis; else None."""
  kernel = shape_of(op.ins[1])
  out_ndim = len(shape_of(op.outs[0]))
  if op.prim is P.conv_general_dilated_p:
    dn = op.params["dimension_numbers"]
    if op.params.get("batch_group_count", 1) != 1 or dn.out_spec[1] != out_ndim - 1:
      return None
    return dn.rhs_spec[0], out_ndim - 1
  if op.prim is P.dot_general_p:
    (_, rc), (_, rb) = op.params["dimension_numbers"]
    free = [d for d in range(len(kernel)) if d not in rc and d not in rb]
    if rb or len(free) != 1 or free[0] != len(kernel) - 1:
      return None
    return free[0], out_ndim - 1
  return None


def fold_affine(ops: list, kinds: dict, avals: dict, out) -> list:
  """Folds ``y = contraction(spikes, W)`` followed by a chain of per-channel constant adds, subtractions, products
  and divisions (a conv's bias, an eval-mode BatchNorm) into ``contraction(spikes, W * s) + b``.

  The kernel ``W * s`` and the bias ``b`` are constants, computed once before the time loop; every step then runs
  one contraction and one add instead of the chain. Equal to the unfolded program up to float rounding (the products
  are taken in another order); both simulation schedules run the same folded program, so they still agree bit for
  bit. A chain stops at a value with more than one use, an operand that is not constant per output channel, or any
  other op.
  """
  shape_of = lambda a: np.shape(a.val) if isinstance(a, Lit) else avals[a].shape  # noqa: E731
  kind_of = lambda a: CONST if isinstance(a, Lit) else kinds[a]  # noqa: E731
  uses: dict = {}
  for op in ops:
    inner = op.op if isinstance(op, MaxSite) else op
    for a in inner.ins:
      if not isinstance(a, Lit):
        uses[a] = uses.get(a, 0) + 1
  if not isinstance(out, Lit):
    uses[out] = uses.get(out, 0) + 1
  consumer = {}
  for pos, op in enumerate(ops):
    if isinstance(op, Op):
      for a in op.ins:
        if not isinstance(a, Lit):
          consumer.setdefault(a, pos)
  next_id = [max(avals) + 1]
  replaced, inserted = set(), {}

  def emit(f, atoms, scope, where) -> tuple[list, list]:
    """Traces ``f(*atoms)`` into new ops; returns (ops, output atoms)."""
    closed = jax.make_jaxpr(f)(*[jax.ShapeDtypeStruct(shape_of(a), avals[a].dtype if not isinstance(a, Lit)
                                                      else jnp.result_type(a.val)) for a in atoms])
    env = dict(zip(closed.jaxpr.invars, atoms))
    new = []
    assert not closed.jaxpr.constvars, "fold_affine: a helper closed over a constant"
    for eqn in closed.jaxpr.eqns:
      ins = tuple(Lit(v.val) if isinstance(v, jcore.Literal) else env[v] for v in eqn.invars)
      outs = []
      for v in eqn.outvars:
        i = next_id[0]
        next_id[0] += 1
        avals[i] = jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype)
        kinds[i] = max((kind_of(a) for a in ins), default=CONST)
        env[v] = i
        outs.append(i)
      new.append(Op(eqn.primitive, dict(eqn.params), ins, tuple(outs), where, scope))
    return new, [Lit(v.val) if isinstance(v, jcore.Literal) else env[v] for v in closed.jaxpr.outvars]

  for pos, op in enumerate(ops):
    if not (isinstance(op, Op) and rules.is_contraction(op.prim) and kinds[op.outs[0]] == SPIKE
            and kind_of(op.ins[0]) == SPIKE and kind_of(op.ins[1]) == CONST and pos not in replaced):
      continue
    axes = _feature_axes(op, shape_of)
    if axes is None:
      continue
    y_shape = shape_of(op.outs[0])
    channels = y_shape[-1]
    chain, cur = [], op.outs[0]
    while uses.get(cur, 0) == 1 and cur in consumer:
      nxt = ops[consumer[cur]]
      name = _CHAIN.get(nxt.prim)
      if name is None or len(nxt.ins) != 2:
        break
      side = 0 if nxt.ins[0] == cur else 1
      const = nxt.ins[1 - side]
      c_shape = shape_of(const)
      if (kind_of(const) != CONST or (name in ("sub", "div") and side != 0) or len(c_shape) > len(y_shape)
          or any(d != 1 for d in c_shape[:-1]) or (c_shape and c_shape[-1] not in (1, channels))
          or tuple(shape_of(nxt.outs[0])) != tuple(y_shape)):
        break
      chain.append((consumer[cur], name, const))
      cur = nxt.outs[0]
    if not chain:
      continue
    names = tuple(name for _, name, _ in chain)
    kernel_axis, _ = axes

    def constants(w, *cs, names=names, kernel_axis=kernel_axis, channels=channels):
      scale = jnp.ones((channels,), jnp.float32)
      bias = jnp.zeros((channels,), jnp.float32)
      for name, c in zip(names, cs):
        c = jnp.broadcast_to(jnp.asarray(c, jnp.float32).reshape((-1,))[-channels:] if jnp.ndim(c) else c,
                             (channels,))
        if name == "add":
          bias = bias + c
        elif name == "sub":
          bias = bias - c
        elif name == "mul":
          scale, bias = scale * c, bias * c
        else:
          scale, bias = scale / c, bias / c
      shape = [1] * w.ndim
      shape[kernel_axis] = channels
      return (w * scale.reshape(shape).astype(w.dtype)), bias.astype(w.dtype)

    last_pos, last = chain[-1][0], ops[chain[-1][0]]
    const_ops, (new_w, new_b) = emit(constants, [op.ins[1]] + [c for _, _, c in chain], op.scope, op.where)
    contraction = Op(op.prim, op.params, (op.ins[0], new_w), op.outs, op.where, op.scope)
    bias_ops, _ = emit(lambda y, b: y + b, [op.outs[0], new_b], last.scope, last.where)
    # The chain's last value keeps its id (later ops read it): the bias add writes it.
    bias_ops[-1] = bias_ops[-1]._replace(outs=last.outs)
    kinds[last.outs[0]] = SPIKE
    replaced.update(p for p, _, _ in chain)
    replaced.add(pos)
    # All at the chain's end: the chain's constants are all made by then, and nothing in between reads the
    # contraction's output (its only reader was the chain).
    inserted[last_pos] = const_ops + [contraction] + bias_ops
  if not replaced:
    return ops
  folded = []
  for pos, op in enumerate(ops):
    if pos in inserted:
      folded.extend(inserted[pos])
    elif pos not in replaced:
      folded.append(op)
  return folded


# ----------------------------------------------------------------------------------------------------------------
# Program identity.
# ----------------------------------------------------------------------------------------------------------------

def _digest(value) -> str:
  arr = np.asarray(value)
  return hashlib.sha256(arr.tobytes()).hexdigest()[:16] + f"{arr.dtype}{arr.shape}"


def _param_key(value):
  """A description of an equation parameter that is equal exactly when the parameters act the same."""
  if isinstance(value, jcore.ClosedJaxpr):
    return ("closed_jaxpr", str(value.jaxpr), tuple(_digest(c) for c in value.consts))
  if isinstance(value, jcore.Jaxpr):
    return ("jaxpr", str(value))
  if isinstance(value, (np.ndarray, jax.Array)):
    return ("array", _digest(value))
  if isinstance(value, (tuple, list)):
    return (type(value).__name__,) + tuple(_param_key(v) for v in value)
  if isinstance(value, dict):
    return ("dict",) + tuple((k, _param_key(v)) for k, v in sorted(value.items(), key=lambda kv: str(kv[0])))
  if callable(value) and not isinstance(value, type):
    # Functions compare by identity (equal names must never merge two behaviours); such a key does not carry over
    # to another process, where the program then simply counts as new.
    return ("callable", getattr(value, "__qualname__", ""), id(value))
  return ("value", type(value).__name__, repr(value))


def _program_key(ops, out, var_ids, input_ids, consts, kinds, avals) -> str:
  """The digest of :attr:`Program.key`. Values are numbered in the order the program first mentions them
  (variables, inputs, then each op's operands and results), so the numbers the builder happened to hand out (gaps
  left by dead code, the order in which nested jaxprs' constants were met) do not enter it: a program rebuilt from
  its saved form (:mod:`jaxsnn._src.program_io`) has the key of the original."""
  number: dict = {}

  def atom(a):
    if isinstance(a, Lit):
      return ("lit", _digest(a.val))
    if a not in number:
      number[a] = len(number)
    return number[a]

  parts = [("vars", tuple(map(atom, var_ids))), ("inputs", tuple(map(atom, input_ids)))]
  for op in ops:
    if isinstance(op, Site):
      parts.append(("site", op.name, op.kind, op.levels, tuple(map(atom, op.ins)), atom(op.out)))
      continue
    name = None
    if isinstance(op, MaxSite):
      name, op = op.name, op.op
    parts.append(("op", name, op.prim.name, type(op.prim).__name__,
                  tuple(_param_key(v) for v in sorted(op.params.items())),
                  tuple(map(atom, op.ins)), tuple(map(atom, op.outs))))
  parts.append(("out", atom(out)))
  parts.append(("consts", tuple(sorted((number[i], _digest(v)) for i, v in consts if i in number))))
  parts.append(("kinds", tuple(sorted((n, kinds[i]) for i, n in number.items() if i in kinds))))
  parts.append(("avals", tuple((n, tuple(map(str, avals[i].shape)), str(avals[i].dtype))
                               for i, n in sorted(number.items(), key=lambda kv: kv[1]))))
  return hashlib.sha256(repr(parts).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# Checks that need their own trace.
# ----------------------------------------------------------------------------------------------------------------

_REDUCTIONS = {P.reduce_sum_p: "axes", P.reduce_max_p: "axes", P.reduce_min_p: "axes", P.reduce_prod_p: "axes",
               P.reduce_and_p: "axes", P.reduce_or_p: "axes", P.argmax_p: "axes", P.argmin_p: "axes",
               P.cumsum_p: "axis", P.cumprod_p: "axis", P.cummax_p: "axis", P.cummin_p: "axis",
               P.cumlogsumexp_p: "axis", P.sort_p: "dimension"}


def _batch_axes_reduced(op: Op, program: "Program") -> list:
  """The axes of ``op``'s data operand that carry the (symbolic) batch and that ``op`` reduces, sorts or contracts."""
  def batch_axes(atom):
    return [i for i, d in enumerate(program.aval(atom).shape) if "batch" in str(d)]

  prim = op.prim
  if prim in _REDUCTIONS:
    axes = op.params[_REDUCTIONS[prim]]
    axes = set(axes if isinstance(axes, (tuple, list)) else [axes])
    return [i for i in batch_axes(op.ins[0]) if i in axes]
  if prim is P.dot_general_p:
    (lc, rc), _ = op.params["dimension_numbers"]
    return [i for atom, c in zip(op.ins, (lc, rc)) for i in batch_axes(atom) if i in c]
  if prim is P.reduce_window_sum_p or prim in (P.reduce_window_max_p, P.reduce_window_min_p):
    return [i for i in batch_axes(op.ins[0]) if op.params["window_dimensions"][i] > 1]
  return []


def check_batch_axis(fn: Callable, variables, x, *, caller: str) -> None:
  """Checks that the network treats batch entries independently: no operation on the data reduces, sorts or
  contracts over the batch axis (BatchNorm with batch statistics, ``x - x.mean(0)``, ...), and every site and the
  output keep the input's leading axis as their batch axis.

  Traces once more with a symbolic batch size (``jax.export.symbolic_shape``): the batch axis is wherever that symbol
  is. Where the network does not trace with a symbolic batch, it is run instead on the first two examples and on the
  first alone, whose answers must agree.

  Raises:
    ConversionError: naming the first operation (or site, or the output) that mixes batch entries.
  """
  hint = ("a network must treat batch entries independently: BatchNorm in eval mode (use_running_average=True / "
          "train=False), no statistics over the batch")
  (batch,) = jax.export.symbolic_shape("batch")
  spec = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((batch,) + np.shape(a)[1:], jnp.result_type(a)), x)
  try:
    program = build_program(fn, jax.tree_util.tree_map(_spec, variables), spec, caller=caller)
  except ConversionError:
    raise
  except Exception:  # noqa: BLE001  (some ops do not trace with symbolic shapes: check by running instead)
    _check_batch_independence_by_running(fn, variables, x, caller, hint)
    return
  producer = {o: op for op in program.ops for o in op.outs}
  context = Context({}, {}, producer)
  for op in program.ops:
    inner = op.op if isinstance(op, MaxSite) else op
    if isinstance(inner, Op) and any(program.kind(a) != CONST for a in inner.ins):
      axes = _batch_axes_reduced(inner, program)
      if axes:
        shape = tuple(map(str, program.aval(inner.ins[0]).shape))
        raise ConversionError(
            f"{caller}: primitive '{inner.prim.name}' reduces over the batch axis (axis {axes[0]} of a value of shape "
            f"{shape}): each example's answer would depend on the rest of its batch.\n  at: "
            f"{inner.where or 'unknown source line'}\n  in module: {context.module(inner) or '(top level)'}\n"
            f"  hint: {hint}.")
  for site in program.sites:
    shape = program.avals[site.x].shape
    if not shape or str(shape[0]) != "batch":
      raise ConversionError(
          f"{caller}: the activation at {site.where} (module {site.scope or '(top level)'}) acts on values of "
          f"shape {tuple(map(str, shape))} whose leading axis is not the batch axis; {hint}.")
  shape = program.aval(program.out).shape
  if not shape or str(shape[0]) != "batch":
    raise ConversionError(f"{caller}: the network output has shape {tuple(map(str, shape))}; its leading axis must be "
                          "the batch axis.")


def _check_batch_independence_by_running(fn, variables, x, caller, hint) -> None:
  first = jax.tree_util.tree_leaves(x)[0]
  if first.shape[0] < 2:
    return  # one example: nothing to compare
  two = jax.tree_util.tree_map(lambda a: jnp.asarray(a)[:2], x)
  one = jax.tree_util.tree_map(lambda a: jnp.asarray(a)[:1], x)
  a, b = np.asarray(fn(variables, two), np.float64)[:1], np.asarray(fn(variables, one), np.float64)
  if a.shape != b.shape or not np.allclose(a, b, rtol=1e-3, atol=1e-3 * (np.abs(b).max() + 1e-30)):
    raise ConversionError(f"{caller}: the network's answer for the first example changes when the second is in its "
                          f"batch; {hint}.")


# ----------------------------------------------------------------------------------------------------------------
# The walker.
# ----------------------------------------------------------------------------------------------------------------

def read(env: dict, atom):
  return atom.val if isinstance(atom, Lit) else env[atom]


def initial_env(program: Program, variables, x) -> dict:
  env = dict(zip(program.var_ids, jax.tree_util.tree_leaves(variables)))
  env.update(zip(program.input_ids, jax.tree_util.tree_leaves(x)))
  env.update(program.consts)
  return env


def ann_activation(site: Site, args: Sequence[Any]):
  """The ANN's value of an activation site (ReLU or QCFS) given its operands."""
  if site.kind == QCFS:
    return qcfs_p.bind(args[0], args[1], levels=site.levels)
  return jnp.maximum(args[0], jnp.zeros((), args[0].dtype))


def walk(program: Program, env: dict, *, kinds: frozenset | None = None,
         op_rule: Callable[[Op, list], tuple] | None = None,
         site_rule: Callable[[Site, list], Any] | None = None,
         max_rule: Callable[[MaxSite, list], Any] | None = None) -> dict:
  """Runs the ops of ``program`` (those whose outputs are of ``kinds``, all if None), updating ``env`` in place.

  Args:
    program: the program.
    env: id -> value for every value already known.
    kinds: run only ops producing values of these kinds.
    op_rule: ``(op, args) -> outs`` for ordinary ops; default binds the primitive.
    site_rule: ``(site, args) -> y`` for activation sites (``args``: the pre-activation, and for QCFS its
      threshold); default: the ANN's activation.
    max_rule: ``(max_site, args) -> y`` for max sites; default binds the primitive (the ANN's max).

  Returns:
    ``env``.
  """
  op_rule = op_rule or (lambda op, args: op.bind(*args))
  site_rule = site_rule or ann_activation
  for op in program.ops:
    if isinstance(op, Site):
      if kinds is None or SPIKE in kinds:
        env[op.out] = site_rule(op, [read(env, a) for a in op.ins])
      continue
    inner = op.op if isinstance(op, MaxSite) else op
    if kinds is not None and program.kinds[inner.outs[0]] not in kinds:
      continue
    args = [read(env, a) for a in inner.ins]
    if isinstance(op, MaxSite) and max_rule is not None:
      outs = (max_rule(op, args),)
    else:
      outs = op_rule(inner, args)
    env.update(zip(inner.outs, outs))
  return env


def site_values(program: Program, variables, x) -> tuple[dict, Any]:
  """The ANN's activation at every site ``{site: [batch, *shape]}`` and its output (the ANN reference walk)."""
  env = initial_env(program, variables, x)
  rec = {}

  def record(site, args):
    rec[site.name] = y = ann_activation(site, args)
    return y

  walk(program, env, site_rule=record)
  return rec, jnp.asarray(read(env, program.out))


def value_shapes(program: Program) -> tuple[dict, Any]:
  """The shapes and dtypes of what :func:`site_values` returns: ``({site: ShapeDtypeStruct}, output's)``."""
  return {s.name: program.avals[s.x] for s in program.sites}, program.aval(program.out)


def ann_pass(traced: Traced, variables, x) -> tuple[dict, Any]:
  """The one ANN pass of jaxsnn: the activation at every site and the output, for use inside a jitted function
  (calibration, histograms and the ANN references of the low-latency tools all call this)."""
  return site_values(build_program(traced.fn, variables, x), variables, x)


@functools.partial(jit, static_argnums=0)
def ann_outputs(traced: Traced, variables, x) -> tuple[dict, Any]:
  """:func:`ann_pass`, jitted (compiled once per program and input shape). Its dict comes back key-sorted (as every
  dict out of jit): reorder by the network's site names where order matters."""
  return ann_pass(traced, variables, x)
