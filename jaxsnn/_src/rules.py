"""What jaxsnn knows about each primitive, in one registry keyed by primitive.

Every primitive that may act on spike-dependent values has one :class:`Rule` in :data:`RULES`. The converter reads
it to decide whether an operation converts (:func:`why_not_spiking`), the layer-major simulator whether it is a
contraction whose kernel depends on the batch size (:func:`is_contraction`), and the cost analysis how to count its
connections (:func:`structural`). A primitive missing from the registry converts only where none of its operands
depends on spikes (it is then computed once, before the time loop). Adding support for a linear primitive is one
entry here.

Kinds of rule:

* ``LINEAR``: jointly linear in the operands at ``linear`` positions (all by default), which may be spiking in any
  mix; the other operands (indices, predicates) must be constant in time and are used as they are.
* ``PRODUCT``: a product (``mul``, ``dot_general``, convolution): linear in each operand while the others are
  constant, so at most one operand may be spiking.
* ``QUOTIENT``: ``div``: linear in the dividend; the divisor must be constant in time.
* ``MAX``: a max of spiking values (max pooling, ``jnp.maximum(a, b)``, ``max`` reductions), simulated with the
  cumulative-max rule when every data operand is spiking.
* ``CAST``: ``convert_element_type``: linear when it casts to a floating type.

The neuron sites themselves (``max(x, 0)``, ``jnp.where(x > 0, x, 0)``, jaxsnn's QCFS primitive) are recognised by
the jaxpr rewrite in :mod:`jaxsnn._src.ir`, not here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import primitives as P

LINEAR, PRODUCT, QUOTIENT, MAX, CAST = "linear", "product", "quotient", "max", "cast"


def _all(n: int) -> range:
  return range(n)


@dataclasses.dataclass(frozen=True)
class Rule:
  """What jaxsnn knows about one primitive.

  Attributes:
    kind: ``LINEAR``, ``PRODUCT``, ``QUOTIENT``, ``MAX`` or ``CAST`` (see the module docstring).
    linear: for ``LINEAR``: the operand positions it is jointly linear in, as a function of the operand count; the
      other positions must not be spiking.
    contraction: XLA chooses the kernel, and so the summation order, from the operand shapes (matmuls and
      convolutions): the exact layer-major schedule runs these once per step of a block.
    structural: an override of the connection-counting rule (see :func:`structural`), ``(op, args, data) -> outs``.
    sums: a reduction (a sum over an axis or a window: ``reduce_sum``, average pooling): XLA may order its additions
      differently for different operand shapes, so the exact layer-major schedule runs it once per step too.
  """

  kind: str
  linear: Callable[[int], Sequence[int]] = _all
  contraction: bool = False
  structural: Callable[..., tuple] | None = None
  sums: bool = False


def _from(first: int) -> Callable[[int], range]:
  return lambda n: range(first, n)


def _positions(*pos: int) -> Callable[[int], tuple]:
  return lambda n: pos


def _sum_of_operands(op, args, data):
  # sub(a, b) connects both operands with weight +1 (the sign is not a connection count).
  a, b = (v if d else jnp.zeros_like(jnp.asarray(v)) for v, d in zip(args, data))
  return (a + b,)


def _identity(op, args, data):
  return (args[0],)


RULES: dict[Any, Rule] = {}


def register(primitive, rule: Rule) -> None:
  """Teaches jaxsnn what a primitive may do with spiking operands (public as ``jaxsnn.register_rule``).

  The converter, both simulation schedules and the cost analysis read the same registry, so one entry makes a new
  primitive convert, simulate and count. A primitive without a rule converts only where none of its operands depends
  on spikes. Registering a rule that is not true of the primitive (a non-linear op declared ``"linear"``) gives a
  wrong SNN: the rule is a promise about the primitive's mathematics.

  Args:
    primitive: a ``jax.extend.core.Primitive`` (e.g. one of your own, or ``jax.lax.cumsum_p``).
    rule: a :class:`Rule`: its ``kind`` (``"linear"``, ``"product"``, ``"quotient"``, ``"max"`` or ``"cast"``) and, for
      linear primitives, which operand positions it is linear in.

  Example:
    >>> double_p = jax.extend.core.Primitive("double")     # a linear primitive of your own
    >>> double_p.def_impl(lambda x: 2 * x)
    >>> double_p.def_abstract_eval(lambda x: x)
    >>> mlir.register_lowering(double_p, mlir.lower_fun(lambda x: 2 * x, multiple_results=False))  # for jit
    >>> jaxsnn.register_rule(double_p, jaxsnn.Rule("linear"))
    >>> snn = jaxsnn.convert(lambda v, x: jax.nn.relu(double_p.bind(x @ v)) @ v.T, w, x, thresholds)
  """
  if not isinstance(rule, Rule):
    raise ValueError(f"jaxsnn.register_rule: rule must be a jaxsnn.Rule; got {rule!r}.")
  if rule.kind not in (LINEAR, PRODUCT, QUOTIENT, MAX, CAST):
    raise ValueError(f"jaxsnn.register_rule: a rule's kind is one of 'linear', 'product', 'quotient', 'max', 'cast'; "
                     f"got {rule.kind!r}.")
  RULES[primitive] = rule


for _p in (P.add_p, P.add_jaxvals_p, P.reshape_p, P.transpose_p, P.broadcast_in_dim_p, P.squeeze_p, P.slice_p,
           P.concatenate_p, P.copy_p, P.rev_p, P.sharding_constraint_p, P.reduce_precision_p, P.real_p, P.imag_p,
           P.conj_p, P.stop_gradient_p, P.device_put_p, P.pad_p, jax.lax.split_p):
  register(_p, Rule(LINEAR))
for _p in (P.reduce_sum_p, P.reduce_window_sum_p, P.cumsum_p):
  register(_p, Rule(LINEAR, sums=True))
register(P.sub_p, Rule(LINEAR, structural=_sum_of_operands))
register(P.neg_p, Rule(LINEAR, structural=_identity))
register(P.select_n_p, Rule(LINEAR, linear=_from(1)))  # the predicate must be constant in time
register(P.dynamic_slice_p, Rule(LINEAR, linear=_positions(0)))  # start indices constant
register(P.dynamic_update_slice_p, Rule(LINEAR, linear=_positions(0, 1)))
register(P.gather_p, Rule(LINEAR, linear=_positions(0)))  # indices constant
register(P.scatter_add_p, Rule(LINEAR, linear=_positions(0, 2)))  # x.at[idx].add(y), idx constant
register(P.scatter_p, Rule(LINEAR, linear=_positions(0, 2)))  # x.at[idx].set(y), idx constant
register(P.mul_p, Rule(PRODUCT))
register(P.dot_general_p, Rule(PRODUCT, contraction=True))
register(P.conv_general_dilated_p, Rule(PRODUCT, contraction=True))
register(P.div_p, Rule(QUOTIENT))
for _p in (P.max_p, P.reduce_max_p, P.reduce_window_max_p):
  register(_p, Rule(MAX))
register(P.convert_element_type_p, Rule(CAST))

# Why common non-linear primitives do not convert, and what to do instead.
HINTS = {
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
    "integer_pow": "powers of data-dependent values are not affine (LayerNorm and BatchNorm in train mode have none)",
    "square": "powers of data-dependent values are not affine (LayerNorm and BatchNorm in train mode have none)",
    "pow": "powers of data-dependent values are not affine",
    "sqrt": "sqrt of data-dependent values is not affine (BatchNorm must be in eval mode: train=False)",
    "rsqrt": "rsqrt of data-dependent values is not affine (BatchNorm must be in eval mode: train=False)",
    "convert_element_type": "casting spiking values to a non-float dtype loses them",
    "while": ("a while loop (lax.while_loop, fori_loop with traced bounds) over spiking values cannot be unrolled; "
              "use a Python loop or lax.scan with a static length"),
    "scan": "a lax.scan / nn.scan longer than the unrolling limit; use a Python loop over the layers",
    "cond": ("lax.cond / nn.cond with a data- or variable-dependent predicate has no spiking form; only a predicate "
             "known when the network is traced is inlined"),
}
DEFAULT_HINT = ("only affine operations (conv, dense, BatchNorm in eval mode, average pooling, residual additions, "
                "reshapes...) and ReLU convert")


def why_not_spiking(primitive, params: dict, spiking: Sequence[bool]) -> str | None:
  """Why an equation of ``primitive`` cannot act on its spiking operands (None if it can, as a non-max op).

  Args:
    primitive: the equation's primitive.
    params: its parameters.
    spiking: for every operand, whether it depends on spikes.
  """
  rule = RULES.get(primitive)
  positions = [i for i, s in enumerate(spiking) if s]
  if rule is None:
    return "is not affine in its data operands"
  if rule.kind == LINEAR:
    allowed = set(rule.linear(len(spiking)))
    bad = [i for i in positions if i not in allowed]
    return None if not bad else f"operand {bad[0]} (which must be constant in time) is spiking"
  if rule.kind == PRODUCT:
    return None if len(positions) <= 1 else "multiplies two spiking operands"
  if rule.kind == QUOTIENT:
    return None if positions == [0] else "operand 1 (the divisor, which must be constant in time) is spiking"
  if rule.kind == CAST:
    return None if jnp.issubdtype(params["new_dtype"], jnp.floating) else "casts to a non-float dtype"
  if rule.kind == MAX:
    if all(spiking):
      return None
    return "mixes spiking and non-spiking operands (only max(x, 0), a ReLU, or a max of spiking values converts)"
  raise AssertionError(rule.kind)


def is_reshaping(primitive) -> bool:
  """Whether ``primitive`` moves, sums or casts values without weighting them (a ``LINEAR`` or ``CAST`` rule).

  An activation of the input alone that reaches a non-affine operation through such ops only (the ``max(var, 0)``
  of a LayerNorm on the input, before its ``rsqrt``) is part of the input's preprocessing, not a layer of neurons.
  """
  rule = RULES.get(primitive)
  return rule is not None and rule.kind in (LINEAR, CAST)


def is_max(primitive) -> bool:
  """Whether ``primitive`` is a max (simulated with the cumulative-max rule on spiking operands)."""
  rule = RULES.get(primitive)
  return rule is not None and rule.kind == MAX


def is_contraction(primitive) -> bool:
  """Whether XLA picks the kernel of ``primitive`` from its operand shapes (matmuls and convolutions)."""
  rule = RULES.get(primitive)
  return rule is not None and rule.contraction


def runs_per_step(primitive) -> bool:
  """Whether the exact layer-major schedule must run ``primitive`` once per step of a block, with the step-major
  operand shapes: a contraction or a sum, whose order of additions XLA may choose from the operand shapes."""
  rule = RULES.get(primitive)
  return rule is not None and (rule.contraction or rule.sums)


def hint(primitive) -> str:
  return HINTS.get(primitive.name, DEFAULT_HINT)


def _nonzero_pattern(v):
  v = jnp.asarray(v)
  return (v != 0).astype(v.dtype)


def structural(op, args: Sequence[Any], data: Sequence[bool], scalar_literal: Sequence[bool],
               keep_scalars: bool = False) -> tuple:
  """Runs ``op`` as a 0/1 connection map: weights replaced by their non-zero pattern, offsets (biases) by 0.

  Applied to the data-dependent operations of a network, this turns the affine map between two layers of neurons
  into a non-negative linear map whose entries count the connections (paths) between them (used by
  :func:`jaxsnn.analysis.fan_out` and :func:`jaxsnn.analysis.ann_macs`).

  Args:
    op: an equation (``prim``, ``params``, ``bind``) of the flattened program.
    args: its operand values (data operands: the connection counts flowing in).
    data: for every operand, whether it depends on the input or spikes (else it is a weight or constant).
    scalar_literal: for every operand, whether it is a scalar literal of the jaxpr (the 1/k of an average pool).
    keep_scalars: multiply or divide by the magnitude of scalar literals instead of dropping it (the "average"
      pooling convention).

  Returns:
    The op's outputs.

  Raises:
    ValueError: if the op has no linear form in its data operands.
  """
  prim = op.prim
  if not any(data):
    return op.bind(*args)
  rule = RULES.get(prim)
  why = why_not_spiking(prim, op.params, data)
  if rule is None or why is not None:
    raise ValueError(f"primitive '{prim.name}' {why}")
  if rule.kind == MAX:
    return (_window_sum(op, args),)
  if rule.structural is not None:
    return rule.structural(op, args, data)
  if rule.kind == PRODUCT:
    dtype = jnp.result_type(*[v for v, d in zip(args, data) if d])
    return op.bind(*[v if d else jnp.abs(jnp.asarray(v, dtype)) if keep_scalars and lit and prim is P.mul_p
                     else _nonzero_pattern(v) for v, d, lit in zip(args, data, scalar_literal)])
  if rule.kind == QUOTIENT:
    if keep_scalars and scalar_literal[1]:
      return op.bind(args[0], jnp.abs(jnp.asarray(args[1], jnp.result_type(args[0]))))
    return (args[0],)
  if rule.kind == LINEAR:
    linear = set(rule.linear(len(args)))
    args = [jnp.zeros_like(jnp.asarray(v)) if i in linear and not d else v for i, (v, d) in enumerate(zip(args, data))]
    return op.bind(*args)
  return op.bind(*args)  # CAST


def _window_sum(op, args):
  """The connectivity of a max: each input connects to the outputs whose window holds it (a sum with the same
  windows). It bounds the events the cumulative-max rule can pass on."""
  p = op.params
  if op.prim is P.max_p:
    return args[0] + args[1]
  if op.prim is P.reduce_max_p:
    return jnp.sum(args[0], axis=tuple(p["axes"]))
  return jax.lax.reduce_window(args[0], np.zeros((), args[0].dtype), jax.lax.add, p["window_dimensions"],
                               p["window_strides"], p["padding"], p["base_dilation"], p["window_dilation"])
