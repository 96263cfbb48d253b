"""Calibration: one streaming pass over training batches that records what thresholds are made of.

Besides the per-neuron maxima (enough for NeuronNorm, channel- and layer-wise max norms), :func:`calibrate` can keep a
per-site histogram of activations (``histogram=True``) from which layer-wise percentile thresholds (Rueckauer et al.
2017) are read. The histogram bins are the float32 bit patterns with the low mantissa bits dropped, so every bin spans
a relative width of at most ``w = 2**-HIST_MANTISSA_BITS``, and a percentile read from it (at the point of each bin
with the smallest worst-case relative error, the harmonic mean of its edges) is within a relative error of
``w / (2 + w)``, less than ``PERCENTILE_RELATIVE_ERROR = 2**-(HIST_MANTISSA_BITS + 1)`` (2**-8, about 0.4 %), of
numpy's exact (linearly interpolated) percentile of the same data, for any data of normal float32 values, with no
range to fix in advance. (Values below about 9e-41 share the zero bin.) Counts are exact: int32 on the device,
moved to int64 on the host before they could overflow.

Calibration batches may carry a mask (``(x, mask)``, ``mask`` a boolean ``[batch]`` array): rows where it is False
(the padding of a last, partial batch) never enter the statistics. Non-finite activations are an error that names the
site. The pass is jitted once per network program and batch shape, at module level: calling it again with an equal
``apply_fn`` (even a fresh ``lambda``) does not compile again.

Threshold rules built from these statistics are in :mod:`jaxsnn._src.norms`; the authors' test-leaking protocol in
:mod:`jaxsnn._src.authors`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsnn._src import ir, parallel
from jaxsnn._src.files import atomic_write
from jaxsnn._src.ir import OUTPUT

HIST_MANTISSA_BITS = 7
_HIST_SHIFT = 23 - HIST_MANTISSA_BITS
HIST_BINS = (0x7F800000 >> _HIST_SHIFT) + 1  # the last bin holds +inf (and NaN)
PERCENTILE_RELATIVE_ERROR = 2.0 ** -(HIST_MANTISSA_BITS + 1)
_INT32_MAX = 2**31 - 1
_FORMAT = "jaxsnn-stats-v1"


class Stats(NamedTuple):
  """Calibration statistics.

  Attributes:
    max: ``{site: array of the site's shape}``: each neuron's max ANN activation over the calibration data, and
      ``"output"``: the max logit per output unit.
    num_samples: number of samples seen.
    hist: None, or (``calibrate(..., histogram=True)``) ``{site: int64 [HIST_BINS]}``: how many activations of the
      site (all neurons, all samples) fell in each bin. Bin ``k`` holds the float32 values whose bit pattern shifted
      right by ``23 - HIST_MANTISSA_BITS`` is ``k``; bin 0 holds zero (and values below about 9e-41).
  """

  max: dict
  num_samples: int
  hist: dict | None = None


def hist_bins(values) -> jax.Array:
  """Histogram bin index (int32) of each non-negative value; see :class:`Stats`."""
  bits = jax.lax.bitcast_convert_type(jnp.asarray(values).astype(jnp.float32), jnp.int32)
  return jnp.clip(bits, 0, 0x7F800000) >> _HIST_SHIFT  # -0.0 (negative bit pattern) -> bin 0; NaN -> inf bin


def hist_bin_edges() -> np.ndarray:
  """``[HIST_BINS + 1]`` float64 lower edges of the bins (the last is +inf)."""
  bits = (np.arange(HIST_BINS + 1, dtype=np.int64) << _HIST_SHIFT).clip(0, 0x7F800000).astype(np.int32)
  return bits.view(np.float32).astype(np.float64)


def hist_bin_points() -> np.ndarray:
  """``[HIST_BINS]`` float64 point at which each bin is read: 0 for bin 0, +inf for the inf bin, and otherwise the
  harmonic mean ``2 L U / (L + U)`` of the bin's edges, the point whose worst relative error over ``[L, U]`` is
  smallest: ``(U - L) / (U + L) <= w / (2 + w)`` with ``w = 2**-HIST_MANTISSA_BITS``, strictly below
  ``PERCENTILE_RELATIVE_ERROR`` (the arithmetic midpoint reaches that bound exactly at ``L``, and float64 rounding of
  the interpolation then crossed it).
  """
  edges = hist_bin_edges()
  lo, hi = edges[1:-2], edges[2:-1].copy()
  hi[-1] = 2.0 ** 128  # the last finite bin ends where float32 overflows, not at +inf
  return np.concatenate([[0.0], 2 * lo * hi / (lo + hi), [np.inf]])


def split_batch(batch, caller: str):
  """``batch`` -> ``(x, mask)``: a batch is an input pytree, or ``(x, mask)`` with ``mask`` a boolean ``[batch]``."""
  if isinstance(batch, tuple) and len(batch) == 2:
    x, mask = batch
    leaves = jax.tree_util.tree_leaves(x)
    if (leaves and np.ndim(mask) == 1 and jnp.result_type(mask) == jnp.bool_
        and np.shape(mask)[0] == np.shape(leaves[0])[0]):
      return x, jnp.asarray(mask)
  return batch, None


def check_batches(batches, caller: str) -> None:
  """Rejects one array (or one dict of arrays) passed where an iterable of batches belongs."""
  if isinstance(batches, (np.ndarray, jax.Array)) or isinstance(batches, dict):
    shape = np.shape(batches) if not isinstance(batches, dict) else "a dict"
    raise ValueError(
        f"{caller}: batches must be an iterable of input batches (a list or a generator of arrays with a leading "
        f"batch axis), but got one {type(batches).__name__} of shape {shape}: iterating over it would feed single "
        "examples without their batch axis. Pass [x] for one batch, or e.g. "
        "(x[i:i + 500] for i in range(0, len(x), 500)).")


def _rows(mask, batch: int):
  return jnp.ones(batch, bool) if mask is None else mask


@functools.partial(jax.jit, static_argnums=(0, 5))
def _calibration_step(traced: ir.Traced, variables, x, mask, state, histogram: bool):
  program = ir.build_program(traced.fn, variables, x, caller="jaxsnn.calibrate")
  rec, out = ir.site_values(program, variables, x)
  running, hist, bad = state

  def rows(v, fill):
    m = mask.reshape((-1,) + (1,) * (v.ndim - 1))
    return jnp.where(m, v, jnp.asarray(fill, v.dtype))

  new = {k: jnp.maximum(running[k], rows(v, 0).max(axis=0)) for k, v in rec.items()}  # activations are >= 0
  new[OUTPUT] = jnp.maximum(running[OUTPUT], rows(out, -jnp.inf).max(axis=0))
  values = dict(rec, **{OUTPUT: out})
  bad = {k: bad[k] + jnp.sum(rows(~jnp.isfinite(v), False), dtype=jnp.int32) for k, v in values.items()}
  if histogram:
    weights = {k: jnp.broadcast_to(mask.reshape((-1,) + (1,) * (v.ndim - 1)), v.shape).ravel().astype(jnp.int32)
               for k, v in rec.items()}
    hist = {k: hist[k] + jnp.bincount(hist_bins(v).ravel(), weights[k], length=HIST_BINS).astype(jnp.int32)
            for k, v in rec.items()}
  return new, hist, bad


def calibrate(apply_fn: Callable, variables: Any, batches: Iterable[Any], histogram: bool = False, *,
              mesh=None) -> Stats:
  """Runs the ANN over ``batches`` once and records the per-neuron max activation of every site and the output.

  The pass is jit-compiled (once per network program and batch shape, at module level, so calling ``calibrate``
  again does not compile again) and streams: only the running maxima (and histograms) are kept.

  Args:
    apply_fn: ``apply_fn(variables, x)``, the same function later given to :func:`jaxsnn.convert`.
    variables: the ANN's variables.
    batches: an iterable of input batches (training data only: never the test set). A batch is an input (arrays
      with a leading batch axis) or ``(x, mask)`` with ``mask`` a boolean ``[batch]`` array marking real examples:
      masked-out rows (padding) never enter the statistics.
    histogram: also keep a per-site histogram of activations (``Stats.hist``), needed for percentile thresholds
      (``jaxsnn.thresholds(stats, "layer", percentile=99.99)``). It costs one scatter-add over every activation per
      batch, so it is off by default.
    mesh: a ``jax.sharding.Mesh`` to shard every batch over (its ``"batch"`` axis); default all local devices (see
      :mod:`jaxsnn._src.parallel`: padded and masked, results equal to one device's).

  Returns:
    :class:`Stats`.

  Raises:
    ValueError: if ``batches`` is one array instead of an iterable of batches, is empty, or holds no unmasked
      example, or if the ANN produced non-finite activations (names the sites and how many values).

  Example:
    >>> stats = jaxsnn.calibrate(apply_fn, variables, [x_train[i:i + 500] for i in range(0, 10000, 500)])
  """
  caller = "jaxsnn.calibrate"
  check_batches(batches, caller)
  mesh = parallel.batch_mesh(mesh, caller)
  variables = parallel.replicate(mesh, variables)
  traced, state, n = None, None, 0
  host_hist, pending, per_sample = {}, 0, {}
  for batch in batches:
    x, mask = split_batch(batch, caller)
    size = int(np.shape(jax.tree_util.tree_leaves(x)[0])[0])
    if traced is None:
      program, traced = ir.trace(apply_fn, variables, x, caller=caller)
      shapes, out_shape = jax.eval_shape(lambda v, x: ir.site_values(program, v, x), variables, x)
      running = {k: jnp.zeros(s.shape[1:], s.dtype) for k, s in shapes.items()}
      running[OUTPUT] = jnp.full(out_shape.shape[1:], -jnp.inf, out_shape.dtype)
      per_sample = {k: int(np.prod(s.shape[1:], dtype=np.int64)) for k, s in shapes.items()}
      hist = {k: jnp.zeros(HIST_BINS, jnp.int32) for k in shapes} if histogram else {}
      host_hist = {k: np.zeros(HIST_BINS, np.int64) for k in hist}
      state = (running, hist, {k: jnp.zeros((), jnp.int32) for k in list(shapes) + [OUTPUT]})
    if histogram:
      # Device counts are int32: move them to the host's int64 before any bin could overflow.
      grow = size * max(per_sample.values(), default=0)
      if grow > _INT32_MAX:
        raise ValueError(f"{caller}: a batch of {size} has {grow} activations at one site, more than an int32 "
                         "histogram count holds; use smaller batches with histogram=True.")
      if pending + grow > _INT32_MAX:
        running, hist, bad = state
        for k in host_hist:
          host_hist[k] += np.asarray(hist[k], np.int64)
        state = (running, {k: jnp.zeros_like(v) for k, v in hist.items()}, bad)
        pending = 0
      pending += grow
    rows = _rows(mask, size)
    n += int(np.sum(np.asarray(rows)))
    x, rows = parallel.shard_batch(mesh, x, parallel.pad(rows, parallel.padded_size(mesh, size), False))
    state = _calibration_step(traced, variables, x, rows, state, bool(histogram))
  if state is None:
    raise ValueError(f"{caller}: batches is empty; pass at least one batch of training inputs.")
  running, hist, bad = state
  bad = {k: int(v) for k, v in bad.items() if int(v)}
  if bad:
    raise ValueError(f"{caller}: the ANN produced non-finite activations (NaN or inf) on the calibration data: "
                     + ", ".join(f"site '{k}': {v} values" for k, v in bad.items())
                     + ". Check the inputs (and their normalisation) and the variables; thresholds made of them "
                     "would be NaN.")
  if n == 0:
    raise ValueError(f"{caller}: every example of the calibration batches is masked out; nothing was measured.")
  out_hist = None
  if histogram:
    out_hist = {k: host_hist[k] + np.asarray(hist[k], np.int64) for k in host_hist}
  # Plain arrays on the default device, not tied to the mesh the pass ran on (a threshold used under another mesh
  # would otherwise clash with it).
  running = {k: jnp.asarray(np.asarray(v)) for k, v in running.items()}
  return Stats(max=running, num_samples=n, hist=out_hist)


# ----------------------------------------------------------------------------------------------------------------
# Save / load.
# ----------------------------------------------------------------------------------------------------------------

def save_stats(path: str | os.PathLike, stats: Stats) -> None:
  """Saves :class:`Stats` to an ``.npz`` file, keyed by site name (exact round trip with :func:`load_stats`).

  Site names come from the model's module paths, so they are the same every time the same model is traced.
  """
  arrays = {"__format__": np.asarray(_FORMAT), "__num_samples__": np.asarray(stats.num_samples, np.int64),
            "__hist_bits__": np.asarray(HIST_MANTISSA_BITS)}
  arrays.update({f"max:{k}": np.asarray(v) for k, v in stats.max.items()})
  if stats.hist is not None:
    arrays.update({f"hist:{k}": np.asarray(v, np.int64) for k, v in stats.hist.items()})
  atomic_write(path, lambda f: np.savez(f, **arrays))


def load_stats(path: str | os.PathLike) -> Stats:
  """Loads :class:`Stats` saved by :func:`save_stats`.

  Raises:
    ValueError: if the file is not a jaxsnn stats file or was written with a different histogram resolution.
  """
  with np.load(path) as f:
    if "__format__" not in f.files or str(f["__format__"]) != _FORMAT:
      raise ValueError(f"jaxsnn.load_stats: {os.fspath(path)!r} is not a jaxsnn stats file ({_FORMAT}).")
    maxes = {k[4:]: jnp.asarray(f[k]) for k in f.files if k.startswith("max:")}
    hists = {k[5:]: np.asarray(f[k]) for k in f.files if k.startswith("hist:")}
    if hists and int(f["__hist_bits__"]) != HIST_MANTISSA_BITS:
      raise ValueError(f"jaxsnn.load_stats: histogram written with {int(f['__hist_bits__'])} mantissa bits; this "
                       f"version uses {HIST_MANTISSA_BITS}.")
    return Stats(max=maxes, num_samples=int(f["__num_samples__"]), hist=hists or None)
