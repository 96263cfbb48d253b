"""Calibration: one streaming pass over training batches that records what thresholds are made of."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsnn._src import ir
from jaxsnn._src.convert import OUTPUT

NORMS = ("neuron", "channel", "layer")


class Stats(NamedTuple):
  """Calibration statistics.

  Attributes:
    max: ``{site: array of the site's shape}``: each neuron's max ANN activation over the calibration data, and
      ``"output"``: the max logit per output unit.
    num_samples: number of samples seen.
  """

  max: dict
  num_samples: int


def _batch_stats(apply_fn, variables, x) -> dict:
  program = ir.build_program(apply_fn, variables, x, caller="jaxsnn.calibrate")
  env = ir.initial_env(program, variables, x)
  rec = {}

  def record(site, z):
    y = jnp.maximum(z, jnp.zeros((), z.dtype))
    rec[site.name] = y.max(axis=0)
    return y

  ir.walk(program, env, site_rule=record)
  rec[OUTPUT] = jnp.asarray(ir.read(env, program.out)).max(axis=0)
  return rec


def calibrate(apply_fn: Callable, variables: Any, batches: Iterable[Any]) -> Stats:
  """Runs the ANN over ``batches`` once and records the per-neuron max activation of every ReLU site and the output.

  The pass is jit-compiled (once per distinct batch shape) and streams: only the running maxima are kept.

  Args:
    apply_fn: ``apply_fn(variables, x)``, the same function later given to :func:`jaxsnn.convert`.
    variables: the ANN's variables.
    batches: an iterable of input batches (training data only: never the test set).

  Returns:
    :class:`Stats`.

  Raises:
    ValueError: if ``batches`` is empty.

  Example:
    >>> stats = jaxsnn.calibrate(apply_fn, variables, (x for x, _ in train_batches))
  """

  @jax.jit
  def update(variables, x, running):
    rec = _batch_stats(apply_fn, variables, x)
    return {k: jnp.maximum(running[k], v) for k, v in rec.items()}

  running, n = None, 0
  for x in batches:
    if running is None:
      shapes = jax.eval_shape(lambda v, x: _batch_stats(apply_fn, v, x), variables, x)
      running = {k: jnp.full(s.shape, 0 if k != OUTPUT else -jnp.inf, s.dtype) for k, s in shapes.items()}
    running = update(variables, x, running)
    n += int(np.shape(jax.tree_util.tree_leaves(x)[0])[0])
  if running is None:
    raise ValueError("jaxsnn.calibrate: batches is empty; pass at least one batch of training inputs.")
  return Stats(max=running, num_samples=n)


def thresholds(stats: Stats, norm: str = "neuron", alpha: float = 1.0) -> dict:
  """Turns calibration statistics into a thresholds pytree for :func:`jaxsnn.convert`.

  Args:
    stats: from :func:`calibrate`.
    norm: ``"neuron"`` (NeuronNorm: each neuron's own max, the paper's method), ``"channel"`` (max over each channel,
      the last axis), or ``"layer"`` (one max per site, Rueckauer et al. 2017).
    alpha: scale applied to every threshold (the paper's Fig. 3 alpha).

  Returns:
    ``{site: array of the site's shape}`` including ``"output"`` (max logit per class, clipped at 0).

  Raises:
    ValueError: for an unknown norm or a non-positive alpha.
  """
  if norm not in NORMS:
    raise ValueError(f"jaxsnn.thresholds: norm must be one of {NORMS}; got {norm!r}.")
  if not alpha > 0:
    raise ValueError(f"jaxsnn.thresholds: alpha must be > 0; got {alpha!r}.")
  out = {}
  for name, m in stats.max.items():
    m = jnp.maximum(jnp.asarray(m), 0)
    if norm == "layer":
      m = jnp.broadcast_to(m.max(), m.shape)
    elif norm == "channel" and m.ndim > 1:
      m = jnp.broadcast_to(m.max(axis=tuple(range(m.ndim - 1)), keepdims=True), m.shape)
    out[name] = m * alpha
  return out
