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

The authors' threshold protocol (per neuron *and* per batch slot, maxima over the test and train loaders) is here too,
as :func:`authors_thresholds` / :func:`simulate_authors`, for comparison only: it leaks the test set into the
thresholds.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsnn._src import ir
from jaxsnn._src.convert import OUTPUT, SpikingNetwork
from jaxsnn._src.simulate import Trace, simulate

NORMS = ("neuron", "channel", "layer")

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


def _site_values(apply_fn, variables, x, caller) -> tuple[dict, Any]:
  """The ANN's ReLU outputs ``{site: [batch, *shape]}`` and its output, by a walk with a recording site rule."""
  program = ir.build_program(apply_fn, variables, x, caller=caller)
  env = ir.initial_env(program, variables, x)
  rec = {}

  def record(site, z):
    y = jnp.maximum(z, jnp.zeros((), z.dtype))
    rec[site.name] = y
    return y

  ir.walk(program, env, site_rule=record)
  return rec, jnp.asarray(ir.read(env, program.out))


def hist_bins(values) -> jax.Array:
  """Histogram bin index (int32) of each non-negative value; see :class:`Stats`."""
  bits = jax.lax.bitcast_convert_type(jnp.asarray(values).astype(jnp.float32), jnp.int32)
  return jnp.clip(bits, 0, 0x7F800000) >> _HIST_SHIFT  # -0.0 (negative bit pattern) -> bin 0; NaN -> inf bin


def hist_bin_edges() -> np.ndarray:
  """``[HIST_BINS + 1]`` float64 lower edges of the bins (the last is +inf)."""
  bits = (np.arange(HIST_BINS + 1, dtype=np.int64) << _HIST_SHIFT).clip(0, 0x7F800000).astype(np.int32)
  return bits.view(np.float32).astype(np.float64)


def _hist_bin_points() -> np.ndarray:
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


def _batch_stats(apply_fn, variables, x, histogram: bool) -> tuple[dict, dict]:
  rec, out = _site_values(apply_fn, variables, x, "jaxsnn.calibrate")
  maxes = {k: v.max(axis=0) for k, v in rec.items()}
  maxes[OUTPUT] = out.max(axis=0)
  hists = {k: jnp.bincount(hist_bins(v).ravel(), length=HIST_BINS) for k, v in rec.items()} if histogram else {}
  return maxes, hists


def calibrate(apply_fn: Callable, variables: Any, batches: Iterable[Any], histogram: bool = False) -> Stats:
  """Runs the ANN over ``batches`` once and records the per-neuron max activation of every ReLU site and the output.

  The pass is jit-compiled (once per distinct batch shape) and streams: only the running maxima (and histograms) are
  kept.

  Args:
    apply_fn: ``apply_fn(variables, x)``, the same function later given to :func:`jaxsnn.convert`.
    variables: the ANN's variables.
    batches: an iterable of input batches (training data only: never the test set).
    histogram: also keep a per-site histogram of activations (``Stats.hist``), needed for percentile thresholds
      (``jaxsnn.thresholds(stats, "layer", percentile=99.99)``). It costs one scatter-add over every activation per
      batch, so it is off by default.

  Returns:
    :class:`Stats`.

  Raises:
    ValueError: if ``batches`` is empty.

  Example:
    >>> stats = jaxsnn.calibrate(apply_fn, variables, (x for x, _ in train_batches), histogram=True)
  """

  @jax.jit
  def update(variables, x, running, hist):
    maxes, hists = _batch_stats(apply_fn, variables, x, histogram)
    return {k: jnp.maximum(running[k], v) for k, v in maxes.items()}, {k: hist[k] + h for k, h in hists.items()}

  running, n = None, 0
  dev_hist, host_hist, pending = {}, {}, 0
  per_sample = {}
  for x in batches:
    if running is None:
      shapes, _ = jax.eval_shape(lambda v, x: _batch_stats(apply_fn, v, x, False), variables, x)
      running = {k: jnp.full(s.shape, 0 if k != OUTPUT else -jnp.inf, s.dtype) for k, s in shapes.items()}
      if histogram:
        per_sample = {k: int(np.prod(s.shape, dtype=np.int64)) for k, s in shapes.items() if k != OUTPUT}
        dev_hist = {k: jnp.zeros(HIST_BINS, jnp.int32) for k in per_sample}
        host_hist = {k: np.zeros(HIST_BINS, np.int64) for k in per_sample}
    batch = int(np.shape(jax.tree_util.tree_leaves(x)[0])[0])
    if histogram:
      # Device counts are int32: move them to the host's int64 before any bin could overflow.
      grow = batch * max(per_sample.values(), default=0)
      if grow > _INT32_MAX:
        raise ValueError(f"jaxsnn.calibrate: a batch of {batch} has {grow} activations at one site, more than an "
                         "int32 histogram count holds; use smaller batches with histogram=True.")
      if pending + grow > _INT32_MAX:
        for k in host_hist:
          host_hist[k] += np.asarray(dev_hist[k], np.int64)
        dev_hist = {k: jnp.zeros_like(v) for k, v in dev_hist.items()}
        pending = 0
      pending += grow
    running, dev_hist = update(variables, x, running, dev_hist)
    n += batch
  if running is None:
    raise ValueError("jaxsnn.calibrate: batches is empty; pass at least one batch of training inputs.")
  hist = None
  if histogram:
    hist = {k: host_hist[k] + np.asarray(dev_hist[k], np.int64) for k in host_hist}
  return Stats(max=running, num_samples=n, hist=hist)


def site_percentiles(stats: Stats, q: float, include_zeros: bool = False) -> dict:
  """The ``q``-th percentile of each site's activations (all neurons and samples), read from ``stats.hist``.

  The estimate is within a relative error of ``PERCENTILE_RELATIVE_ERROR`` (2**-8) of
  ``np.percentile(values, q)`` (linear interpolation) on the same values, and never above the site's max.

  Args:
    stats: from ``calibrate(..., histogram=True)``.
    q: percentile in [0, 100].
    include_zeros: count zero activations too. The default (False) takes the percentile of the positive activations
      only, as the SNN toolbox does for Rueckauer et al.'s percentile norm (most ReLU outputs are zero, so including
      them drags low percentiles to 0).

  Returns:
    ``{site: float}`` (0.0 for a site without positive activations).

  Raises:
    ValueError: if ``stats`` has no histogram or ``q`` is outside [0, 100].
  """
  caller = "jaxsnn.site_percentiles"
  if stats.hist is None:
    raise ValueError(f"{caller}: these stats have no histogram; calibrate with jaxsnn.calibrate(..., histogram=True).")
  if not 0 <= q <= 100:
    raise ValueError(f"{caller}: q must be in [0, 100]; got {q!r}.")
  points = _hist_bin_points()
  out = {}
  for name, counts in stats.hist.items():
    counts = np.asarray(counts, np.int64).copy()
    if not include_zeros:
      counts[0] = 0
    total = int(counts.sum())
    if total == 0:
      out[name] = 0.0
      continue
    h = (total - 1) * q / 100.0
    lo, hi = int(np.floor(h)), int(np.ceil(h))
    cum = np.cumsum(counts)
    a, b = points[np.searchsorted(cum, [lo, hi], side="right")]
    value = a + (h - lo) * (b - a) if b != a else a
    out[name] = float(min(value, float(np.max(np.asarray(stats.max[name])))))
  return out


def _normalize(m, norm: str):
  """Per-neuron maxima ``m`` -> thresholds of the same shape under ``norm`` (max over neuron/channel/layer)."""
  m = jnp.maximum(jnp.asarray(m), 0)
  if norm == "layer":
    return jnp.broadcast_to(m.max(), m.shape)
  if norm == "channel" and m.ndim > 1:
    return jnp.broadcast_to(m.max(axis=tuple(range(m.ndim - 1)), keepdims=True), m.shape)
  return m


def thresholds(stats: Stats, norm: str = "neuron", alpha: float = 1.0, percentile: float | None = None) -> dict:
  """Turns calibration statistics into a thresholds pytree for :func:`jaxsnn.convert`.

  Args:
    stats: from :func:`calibrate`.
    norm: ``"neuron"`` (NeuronNorm: each neuron's own max, the paper's method), ``"channel"`` (max over each channel,
      the last axis, as Spiking-YOLO's channel-wise norm), or ``"layer"`` (one max per site, Rueckauer et al. 2017).
    alpha: scale applied to every threshold (the paper's Fig. 3 alpha).
    percentile: with ``norm="layer"`` only: use this percentile (e.g. 99.9 or 99.99) of the site's positive
      activations instead of its max (Rueckauer et al. 2017); needs ``calibrate(..., histogram=True)``. See
      :func:`site_percentiles` for the error bound.

  Returns:
    ``{site: array of the site's shape}`` including ``"output"`` (max logit per class under ``norm``, clipped at 0;
    the percentile applies to the ReLU sites only).

  Raises:
    ValueError: for an unknown norm, a non-positive alpha, or a percentile without ``norm="layer"`` or a histogram.

  Example:
    >>> th = jaxsnn.thresholds(stats, "layer", percentile=99.99)
  """
  caller = "jaxsnn.thresholds"
  if norm not in NORMS:
    raise ValueError(f"{caller}: norm must be one of {NORMS}; got {norm!r}.")
  if not alpha > 0:
    raise ValueError(f"{caller}: alpha must be > 0; got {alpha!r}.")
  pct = None
  if percentile is not None:
    if norm != "layer":
      raise ValueError(f"{caller}: percentile thresholds are layer-wise (Rueckauer et al. 2017); use "
                       f"norm='layer' with percentile={percentile!r}, got norm={norm!r}.")
    if stats.hist is None:
      raise ValueError(f"{caller}: percentile={percentile!r} needs activation histograms; calibrate with "
                       "jaxsnn.calibrate(..., histogram=True).")
    if not 0 < percentile <= 100:
      raise ValueError(f"{caller}: percentile must be in (0, 100]; got {percentile!r}.")
    pct = site_percentiles(stats, percentile)
  out = {}
  for name, m in stats.max.items():
    if pct is not None and name in pct:
      m = jnp.full(np.shape(m), pct[name], jnp.result_type(m))
    else:
      m = _normalize(m, norm)
    out[name] = m * alpha
  return out


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
  with open(path, "wb") as f:
    np.savez(f, **arrays)


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


def save_thresholds(path: str | os.PathLike, thresholds: Mapping[str, Any]) -> None:
  """Saves a thresholds dict ``{site: array}`` to an ``.npz`` file (exact round trip with :func:`load_thresholds`)."""
  arrays = {"__format__": np.asarray(_FORMAT + "-thresholds")}
  arrays.update({f"th:{k}": np.asarray(v) for k, v in thresholds.items()})
  with open(path, "wb") as f:
    np.savez(f, **arrays)


def load_thresholds(path: str | os.PathLike) -> dict:
  """Loads thresholds saved by :func:`save_thresholds`: ``{site: jax array}``.

  Raises:
    ValueError: if the file is not a jaxsnn thresholds file.
  """
  with np.load(path) as f:
    if "__format__" not in f.files or str(f["__format__"]) != _FORMAT + "-thresholds":
      raise ValueError(f"jaxsnn.load_thresholds: {os.fspath(path)!r} is not a jaxsnn thresholds file.")
    return {k[3:]: jnp.asarray(f[k]) for k in f.files if k.startswith("th:")}


# ----------------------------------------------------------------------------------------------------------------
# The authors' protocol (comparison only).
# ----------------------------------------------------------------------------------------------------------------

def authors_thresholds(apply_fn: Callable, variables: Any, batches: Iterable[Any]) -> dict:
  """The authors' threshold protocol, for comparison only: it LEAKS THE TEST SET into the thresholds.

  The authors' code (``snnInference_VGG16_CIFAR10.py``) records, for every ReLU site and the output, the max
  activation per neuron *and per position in the batch* (their running max keeps the batch axis), starting from 0,
  over the test loader (batch 256, not shuffled, last partial batch dropped) and then the train loader; it then runs
  the SNN on the test loader with those thresholds, so test sample ``i`` of a batch gets the thresholds of slot ``i``,
  which are at least that very sample's own activations. This flatters accuracy at small T. To reproduce it, pass
  ``batches`` = the test batches followed by the train batches, all of one batch size, then run
  :func:`simulate_authors` on the test batches in the same order. Never use it for reported jaxsnn results: use
  :func:`calibrate` on training data.

  Args:
    apply_fn: the ANN's apply function.
    variables: the ANN's variables.
    batches: input batches, all of the same batch size B (drop the last partial batch, as the authors do).

  Returns:
    ``{site: array [B, *site_shape]}`` including ``"output"`` (``[B, *output_shape]``, also started at 0): the
    thresholds of every batch slot.

  Raises:
    ValueError: if ``batches`` is empty or the batch sizes differ.
  """
  caller = "jaxsnn.authors_thresholds"

  @jax.jit
  def update(variables, x, running):
    rec, out = _site_values(apply_fn, variables, x, caller)
    rec[OUTPUT] = out
    return {k: jnp.maximum(running[k], v) for k, v in rec.items()}

  running, size = None, None
  for i, x in enumerate(batches):
    b = int(np.shape(jax.tree_util.tree_leaves(x)[0])[0])
    if running is None:
      size = b
      shapes = jax.eval_shape(lambda v, x: _site_values(apply_fn, v, x, caller), variables, x)
      running = {k: jnp.zeros(s.shape, s.dtype) for k, s in shapes[0].items()}
      running[OUTPUT] = jnp.zeros(shapes[1].shape, shapes[1].dtype)
    elif b != size:
      raise ValueError(f"{caller}: batch {i} has {b} samples but the first had {size}; the protocol keeps one "
                       "threshold per batch slot, so all batches need one size (drop the last partial batch).")
    running = update(variables, x, running)
  if running is None:
    raise ValueError(f"{caller}: batches is empty.")
  return running


def simulate_authors(snn: SpikingNetwork, x: Any, slot_thresholds: Mapping[str, Any], num_steps: int,
                     block_size: int | None = None):
  """Simulates ``snn`` on batch ``x`` with per-batch-slot thresholds (the authors' protocol; comparison only).

  Sample ``i`` of ``x`` runs with ``slot_thresholds[site][i]`` (``jax.vmap`` of :func:`jaxsnn.simulate` over the
  batch). See :func:`authors_thresholds` for why this protocol leaks the test set.

  Args:
    snn: a converted network (its own thresholds are ignored).
    x: an input batch of size N <= B.
    slot_thresholds: from :func:`authors_thresholds` (``[B, *site_shape]`` per site).
    num_steps: T.
    block_size: as in :func:`jaxsnn.simulate`.

  Returns:
    A :class:`jaxsnn.Trace` laid out as :func:`jaxsnn.simulate`'s (``outputs [T, N, ...]``).

  Raises:
    ValueError: if the slot thresholds do not cover the batch or the sites.
  """
  caller = "jaxsnn.simulate_authors"
  n = int(np.shape(jax.tree_util.tree_leaves(x)[0])[0])
  keys = set(snn.site_names) | ({OUTPUT} if snn.readout == "spike" else set())
  missing = keys - set(slot_thresholds)
  if missing:
    raise ValueError(f"{caller}: slot_thresholds lacks sites {sorted(missing)}; build it with "
                     "jaxsnn.authors_thresholds for this apply_fn.")
  th = {k: jnp.asarray(slot_thresholds[k]) for k in keys}
  slots = {np.shape(v)[0] for v in th.values()}
  if len(slots) != 1 or slots.pop() < n:
    raise ValueError(f"{caller}: slot thresholds must all have a leading slot axis of at least the batch size {n}; "
                     f"got shapes {sorted((k, np.shape(v)) for k, v in th.items())}.")
  th = {k: v[:n] for k, v in th.items()}

  def one(th_i, x_i):
    x_i = jax.tree_util.tree_map(lambda a: a[None], x_i)
    return simulate(snn.replace(thresholds=th_i), x_i, num_steps, block_size)

  tr = jax.vmap(one)(th, x)
  return Trace(outputs=jnp.moveaxis(tr.outputs[:, :, 0], 0, 1),
               pos_spikes={k: v[:, 0] for k, v in tr.pos_spikes.items()},
               neg_spikes={k: v[:, 0] for k, v in tr.neg_spikes.items()})
