"""The ANN's accuracy and loss over a dataset: the one way jaxsnn measures an ANN (training's validation and test
evaluations, :func:`jaxsnn.quantize_for_conversion`'s validation, the scripts' "ANN %" column).

It reads data as every streaming function does (:mod:`jaxsnn._src.runner`: any form of the batch protocol, cut into
micro-batches of one shape, sharded over the mesh, padding and masks honoured, labels checked against the network's
classes as :func:`jaxsnn.evaluate` checks them), so the numbers depend only on the real examples, their order and
``micro_batch``.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsnn._src import checks, parallel, runner
from jaxsnn._src.batches import as_batch, check_batches


class AnnMetrics(NamedTuple):
  """An ANN's loss and accuracy over a dataset (:func:`ann_metrics`).

  Attributes:
    loss: the mean softmax cross-entropy of the logits against the labels.
    accuracy: the fraction of examples whose largest logit is the label's.
    count: the examples counted (masked-out rows never are).
  """

  loss: float
  accuracy: float
  count: int


# Plain jax.jit, not jaxsnn's fast-kernel jit: the ANN's numbers (training's validation picks, the committed "ANN %")
# stay the ones XLA's default kernels gave. apply_fn is static: an equal apply_fn (a flax model's bound apply, an
# equal dataclass) reuses the compiled program.
@functools.partial(jax.jit, static_argnums=(0, 5))
def _sums(apply_fn: Callable, variables: Any, x, labels, mask, groups: int):
  logits = apply_fn(variables, x)
  logits = logits.reshape(logits.shape[0], -1).astype(jnp.float32)
  loss = jnp.where(mask, optax.softmax_cross_entropy_with_integer_labels(logits, labels), 0.0)
  correct = jnp.sum(jnp.where(mask, jnp.argmax(logits, -1) == labels, False))
  return runner.micro_sums(loss, groups), correct


def ann_metrics(apply_fn: Callable, variables: Any, batches: Any, *, mesh=None,
                micro_batch: int = runner.MICRO_BATCH, input_key: str = "image", progress: bool = False,
                caller: str = "jaxsnn.training.ann_metrics") -> AnnMetrics:
  """The loss and accuracy of ``apply_fn(variables, x)`` over every real example of ``batches``.

  Args:
    apply_fn: ``apply_fn(variables, x) -> logits [batch, classes]`` in inference mode (for a flax model with
      BatchNorm or dropout: ``lambda v, x: model.apply(v, x, train=False)``; an equal ``apply_fn`` on another call
      reuses the compiled program, a new lambda compiles again).
    variables: its variables.
    batches: labelled batches in any form of the batch protocol (``(x, labels)``, ``(x, labels, mask)``, the dicts
      :func:`jaxsnn.data.batches` yields).
    mesh: a ``jax.sharding.Mesh`` to shard every batch over (its ``"batch"`` axis); default all local devices.
    micro_batch: examples per device in each computation (the result depends only on the examples, their order and
      ``micro_batch``).
    input_key: the input's key in dict batches.
    progress: a tqdm progress bar.
    caller: the name errors carry.

  Returns:
    An :class:`AnnMetrics`.

  Raises:
    ValueError: for batches without labels, labels outside ``[0, classes)``, a network whose output is not one
      vector of class scores per example, or no example at all.

  Example:
    >>> m = training.ann_metrics(lambda v, x: model.apply(v, x, train=False), variables, [(x, y)])
    >>> m.accuracy, m.count
    (1.0, 16)
  """
  check_batches(batches, caller)
  batches = iter(batches)
  first = next(batches, None)
  if first is None:
    raise ValueError(f"{caller}: batches is empty; pass at least one batch.")
  batches = itertools.chain([first], batches)
  x = as_batch(first, caller, input_key).x
  spec = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((1,) + np.shape(a)[1:], a.dtype), x)
  classes = checks.classes(tuple(jax.eval_shape(apply_fn, variables, spec).shape[1:]), caller)
  mesh = parallel.batch_mesh(mesh, caller)
  replicated = parallel.replicate(mesh, variables)

  def step(totals, p: runner.Prepared):
    loss, correct = _sums(apply_fn, replicated, p.x, jnp.asarray(p.labels), p.device_mask, p.groups)
    return runner.add_in_order(totals[0], jax.device_get(loss)), totals[1] + int(correct)

  (loss, correct), count = runner.fold(batches, step, (None, 0), caller=caller, mesh=mesh, micro_batch=micro_batch,
                                       input_key=input_key, labels="accuracy", classes=classes, progress=progress,
                                       desc="ANN")
  return AnnMetrics(float(loss) / count, correct / count, int(count))


def ann_accuracy(apply_fn: Callable, variables: Any, batches: Any, **kwargs) -> float:
  """The accuracy of ``apply_fn(variables, x)`` over every real example of ``batches``: :func:`ann_metrics`'s.

  Args:
    apply_fn: as in :func:`ann_metrics`.
    variables: its variables.
    batches: labelled batches (the batch protocol).
    **kwargs: ``mesh``, ``micro_batch``, ``input_key``, ``progress``, as in :func:`ann_metrics`.

  Returns:
    The fraction of examples classified right.

  Example:
    >>> training.ann_accuracy(lambda v, x: model.apply(v, x, train=False), variables, [(x, y)])
    1.0
  """
  return ann_metrics(apply_fn, variables, batches, caller="jaxsnn.training.ann_accuracy", **kwargs).accuracy
