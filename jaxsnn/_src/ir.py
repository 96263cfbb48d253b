"""Flat programs from jaxprs, and the one walker that runs them.

This is the only module of jaxsnn that touches JAX internals (``jax.extend.core`` and the source-info helpers).

``build_program(fn, variables, x)`` traces ``fn(variables, x)`` to a jaxpr and flattens it into a :class:`Program`:
call-like sub-jaxprs (``jit``/``pjit``, ``custom_jvp_call``, ``custom_vjp_call``, ``checkpoint``, ``closed_call``) are
inlined, every ReLU (``max(x, 0)``, which is what ``jax.nn.relu`` and flax's ``nn.relu`` reduce to) becomes a
:class:`Site`, and every value gets a *kind*:

* ``CONST``: depends on neither the input nor the spikes (weights, BatchNorm's ``rsqrt(var + eps) * scale``);
* ``INPUT``: depends on the input but on no spike (the first layer's current: constant over time);
* ``SPIKE``: depends on spikes; must be computed every step, so the operation producing it must be affine in its
  spiking operands (a table of rules below decides), or be a max of spiking values (:class:`MaxSite`).

``walk`` interprets the program with pluggable rules for ordinary ops, sites and max sites: the calibration pass, the
ANN reference and both simulation schedules are the same walk with different rules.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore
from jax._src import source_info_util

CONST, INPUT, SPIKE = 0, 1, 2


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
  """A ReLU that becomes a spiking neuron site."""

  name: str
  x: Any  # id of the pre-activation
  out: int
  where: str
  scope: str


class MaxSite(NamedTuple):
  """A max of spiking values (max pool, ``jnp.maximum(a, b)``), simulated with the cumulative-max rule."""

  name: str
  op: Op


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
  """

  var_ids: tuple
  input_ids: tuple
  consts: tuple
  ops: tuple
  out: Any
  kinds: dict
  avals: dict

  @property
  def sites(self) -> tuple:
    return tuple(op for op in self.ops if isinstance(op, Site))

  @property
  def max_sites(self) -> tuple:
    return tuple(op for op in self.ops if isinstance(op, MaxSite))

  def kind(self, atom) -> int:
    return CONST if isinstance(atom, Lit) else self.kinds[atom]


class ConversionError(ValueError):
  """Raised when a network contains an operation that has no spiking equivalent."""


# ----------------------------------------------------------------------------------------------------------------
# Rules: which primitives may act on spiking values, and how.
# ----------------------------------------------------------------------------------------------------------------

# Linear (or affine with constant operands) in every spiking operand, whatever mix of operands is spiking.
_ANY_SPIKING = frozenset({
    "add", "add_any", "sub", "neg", "reshape", "transpose", "broadcast_in_dim", "squeeze", "expand_dims", "slice",
    "concatenate", "reduce_sum", "reduce_window_sum", "copy", "copy_p", "rev", "cumsum", "sharding_constraint",
    "reduce_precision", "real", "imag", "conj",
})
# Operand positions that must NOT be spiking (predicate of a select, indices, padding value, divisor), as a function of
# the number of operands.
_NON_SPIKING_ARGS = {
    "pad": lambda n: (1,),
    "select_n": lambda n: (0,),
    "dynamic_slice": lambda n: range(1, n),  # start indices after the operand
    "dynamic_update_slice": lambda n: range(2, n),  # start indices after the operand and the update
    "gather": lambda n: (1,),
    "div": lambda n: (1,),
}
# Bilinear: affine as long as at most one operand is spiking.
_BILINEAR = frozenset({"mul", "dot_general", "conv_general_dilated"})
# Max-like: simulated by the cumulative-max rule when every data operand is spiking.
_MAX_LIKE = frozenset({"max", "reduce_max", "reduce_window_max"})

_HINTS = {
    "tanh": "only ReLU activations convert; replace tanh by relu",
    "logistic": "only ReLU activations convert; replace sigmoid by relu",
    "exp": "softmax/exp inside the network has no spiking form; apply softmax to the SNN's output instead",
    "log": "log inside the network has no spiking form",
    "erf": "GELU has no spiking form; train the ANN with relu",
    "erfc": "GELU has no spiking form; train the ANN with relu",
    "reduce_min": "min pooling has no spiking form",
    "min": "min/clip of spiking values has no spiking form (relu6 and hard clips do not convert); use plain relu",
    "mul": "a product of two data-dependent values is not affine; only products with weights/constants convert",
    "dot_general": "a product of two data-dependent values is not affine (attention-like layers do not convert)",
    "conv_general_dilated": "a convolution of two data-dependent values is not affine",
    "div": "dividing by a data-dependent value is not affine",
    "select_n": "a data-dependent select (jnp.where on activations, leaky/parametric relu) is not affine",
    "max": ("max(x, c) with a non-zero or input-dependent c has no spiking form (use relu = max(x, 0)); softmax "
            "inside the network has none either: apply it to the SNN output"),
    "integer_pow": "powers of data-dependent values are not affine",
    "pow": "powers of data-dependent values are not affine",
    "sqrt": "sqrt of data-dependent values is not affine (BatchNorm must be in eval mode: train=False)",
    "rsqrt": "rsqrt of data-dependent values is not affine (BatchNorm must be in eval mode: train=False)",
    "convert_element_type": "casting spiking values to a non-float dtype loses them",
}


def _spiking_positions(op: Op, kind_of) -> list[int]:
  return [i for i, a in enumerate(op.ins) if kind_of(a) == SPIKE]


def _check_affine(op: Op, kind_of) -> str | None:
  """Returns why ``op`` cannot act on its spiking operands, or None if it can."""
  name = op.prim.name
  spiking = _spiking_positions(op, kind_of)
  if name in _ANY_SPIKING:
    return None
  if name == "convert_element_type":
    return None if jnp.issubdtype(op.params["new_dtype"], jnp.floating) else "casts to a non-float dtype"
  if name in _BILINEAR:
    return None if len(spiking) <= 1 else "multiplies two spiking operands"
  if name in _NON_SPIKING_ARGS:
    banned = _NON_SPIKING_ARGS[name](len(op.ins))
    bad = [i for i in spiking if i in banned]
    return None if not bad else f"operand {bad[0]} (which must be constant in time) is spiking"
  return "is not affine in its data operands"


# ----------------------------------------------------------------------------------------------------------------
# Tracing and flattening.
# ----------------------------------------------------------------------------------------------------------------

_INLINE = frozenset({"pjit", "jit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
                     "custom_vjp_call_jaxpr", "checkpoint", "remat", "named_call"})


def _sub_jaxpr(eqn) -> tuple[Any, Sequence[Any]] | None:
  if eqn.primitive.name not in _INLINE:
    return None
  for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
    j = eqn.params.get(key)
    if isinstance(j, jcore.ClosedJaxpr):
      return j.jaxpr, j.consts
    if isinstance(j, jcore.Jaxpr):
      return j, ()
  return None


def _is_zero(val) -> bool:
  try:
    arr = np.asarray(val)
  except Exception:  # a tracer: not a known zero  # noqa: BLE001
    return False
  return arr.size > 0 and not np.any(arr)


class _Builder:
  def __init__(self):
    self.ops: list = []
    self.consts: list = []
    self.avals: dict = {}
    self.zeros: set = set()  # ids known to hold zeros (broadcasts of a literal 0)
    self.next_id = 0

  def fresh(self, aval) -> int:
    i = self.next_id
    self.next_id += 1
    self.avals[i] = jax.ShapeDtypeStruct(aval.shape, aval.dtype)
    return i

  def is_zero(self, atom) -> bool:
    return _is_zero(atom.val) if isinstance(atom, Lit) else atom in self.zeros

  def emit(self, eqn, ins, where, scope) -> list:
    outs = [self.fresh(v.aval) for v in eqn.outvars]
    op = Op(eqn.primitive, dict(eqn.params), tuple(ins), tuple(outs), where, scope)
    name = eqn.primitive.name
    if name in ("broadcast_in_dim", "reshape", "convert_element_type", "copy", "copy_p") and self.is_zero(ins[0]):
      self.zeros.add(outs[0])
    if name == "max" and len(ins) == 2:
      data = [a for a in ins if not self.is_zero(a)]
      if len(data) == 1:  # max(x, 0): a ReLU
        op = Site(name="", x=data[0], out=outs[0], where=where, scope=scope)
    self.ops.append(op)
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
      inner = str(eqn.source_info.name_stack)
      eqn_scope = "/".join(s for s in (scope, inner) if s)
      eqn_where = source_info_util.summarize(eqn.source_info) or where
      sub = _sub_jaxpr(eqn)
      if sub is not None:
        sub_jaxpr, sub_consts = sub
        n_extra = len(sub_jaxpr.invars) - len(ins)
        if n_extra != 0:  # defensive: call-like primitives pass their operands straight through
          raise ConversionError(f"jaxsnn: cannot inline {eqn.primitive.name} at {eqn_where}: operand mismatch")
        outs = self.inline(sub_jaxpr, sub_consts, ins, eqn_scope, eqn_where)
      else:
        outs = self.emit(eqn, ins, eqn_where, eqn_scope)
      for v, o in zip(eqn.outvars, outs):
        if not isinstance(v, jcore.DropVar):
          env[v] = o
    return [read(v) for v in jaxpr.outvars]

  def const(self, aval, value) -> int:
    i = self.fresh(aval)
    self.consts.append((i, value))
    if _is_zero(value):
      self.zeros.add(i)
    return i


def _spec(a):
  return jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a))


def build_program(fn: Callable, variables, x, *, caller: str = "jaxsnn") -> Program:
  """Traces ``fn(variables, x)`` and returns its flattened, classified :class:`Program`.

  Args:
    fn: the ANN's apply function.
    variables: a pytree of arrays (or shape/dtype structs).
    x: the input pytree; every leaf has a leading batch axis.
    caller: public function name used to prefix error messages.

  Raises:
    ConversionError: for a primitive that acts non-affinely on spiking values, or an output that is not one array.
  """
  var_leaves, _ = jax.tree_util.tree_flatten(variables)
  x_leaves, _ = jax.tree_util.tree_flatten(x)
  closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(
      jax.tree_util.tree_map(_spec, variables), jax.tree_util.tree_map(_spec, x))
  out_leaves = jax.tree_util.tree_leaves(out_shape)
  if len(out_leaves) != 1:
    raise ConversionError(
        f"{caller}: the network must return one array (the logits); it returned {len(out_leaves)} arrays "
        f"with structure {jax.tree_util.tree_structure(out_shape)}. Wrap apply_fn to select the logits.")

  b = _Builder()
  jaxpr = closed.jaxpr
  var_ids = tuple(b.fresh(v.aval) for v in jaxpr.invars[: len(var_leaves)])
  input_ids = tuple(b.fresh(v.aval) for v in jaxpr.invars[len(var_leaves):])
  assert len(input_ids) == len(x_leaves)
  (out,) = b.inline(jaxpr, closed.consts, list(var_ids) + list(input_ids), "", "")

  # Dead-code elimination, backwards from the output.
  live = {out} if not isinstance(out, Lit) else set()
  kept = []
  for op in reversed(b.ops):
    outs = (op.out,) if isinstance(op, Site) else op.outs
    if any(o in live for o in outs):
      kept.append(op)
      ins = (op.x,) if isinstance(op, Site) else op.ins
      live.update(a for a in ins if not isinstance(a, Lit))
  kept.reverse()

  # Classification, validation, naming.
  kinds = {i: CONST for i in var_ids}
  kinds.update({i: INPUT for i in input_ids})
  kinds.update({i: CONST for i, _ in b.consts})
  kind_of = lambda a: CONST if isinstance(a, Lit) else kinds[a]  # noqa: E731
  ops, used_names = [], set()

  def unique(base: str) -> str:
    name, k = base, 1
    while name in used_names:
      name, k = f"{base}_{k}", k + 1
    used_names.add(name)
    return name

  for op in kept:
    if isinstance(op, Site):
      if kind_of(op.x) == CONST:  # relu of weights: an ordinary constant computation
        zero = Lit(np.zeros((), b.avals[op.x].dtype))
        op = Op(jax.lax.max_p, {}, (op.x, zero), (op.out,), op.where, op.scope)
        kinds[op.outs[0]] = CONST
      else:
        shape = b.avals[op.x].shape
        if len(shape) < 1:
          raise ConversionError(f"{caller}: the ReLU at {op.where} acts on a scalar; sites need a batch axis.")
        op = op._replace(name=unique("/".join(s for s in (op.scope, "relu") if s)))
        kinds[op.out] = SPIKE
      ops.append(op)
      continue
    in_kind = max((kind_of(a) for a in op.ins), default=CONST)
    for o in op.outs:
      kinds[o] = in_kind
    if in_kind == SPIKE:
      name = op.prim.name
      if name in _MAX_LIKE:
        if all(kind_of(a) == SPIKE for a in op.ins):
          ops.append(MaxSite(unique("/".join(s for s in (op.scope, name) if s)), op))
          continue
        why = "mixes spiking and non-spiking operands (only max(x, 0), a ReLU, or a max of spiking values converts)"
      else:
        why = _check_affine(op, kind_of)
      if why is not None:
        hint = _HINTS.get(name, "only affine operations (conv, dense, BatchNorm in eval mode, average pooling, "
                                "residual additions, reshapes...) and ReLU convert")
        raise ConversionError(
            f"{caller}: primitive '{name}' {why}, so it has no spiking equivalent.\n"
            f"  at: {op.where or 'unknown source line'}\n  in module: {op.scope or '(top level)'}\n"
            f"  hint: {hint}.")
    ops.append(op)

  return Program(var_ids=var_ids, input_ids=input_ids, consts=tuple(b.consts), ops=tuple(ops), out=out,
                 kinds=kinds, avals=b.avals)


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


def walk(program: Program, env: dict, *, kinds: frozenset | None = None,
         op_rule: Callable[[Op, list], tuple] | None = None,
         site_rule: Callable[[Site, Any], Any],
         max_rule: Callable[[MaxSite, list], Any] | None = None) -> dict:
  """Runs the ops of ``program`` (those whose outputs are of ``kinds``, all if None), updating ``env`` in place.

  Args:
    program: the program.
    env: id -> value for every value already known.
    kinds: run only ops producing values of these kinds.
    op_rule: ``(op, args) -> outs`` for ordinary ops; default binds the primitive.
    site_rule: ``(site, x) -> y`` for ReLU sites.
    max_rule: ``(max_site, args) -> y`` for max sites; default binds the primitive (the ANN's max).

  Returns:
    ``env``.
  """
  op_rule = op_rule or (lambda op, args: op.bind(*args))
  for op in program.ops:
    if isinstance(op, Site):
      if kinds is None or SPIKE in kinds:
        env[op.out] = site_rule(op, env[op.x])
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
