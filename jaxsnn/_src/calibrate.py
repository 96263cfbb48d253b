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

Calibration batches follow the batch protocol (:mod:`jaxsnn._src.batches`); a batch's mask marks its real examples:
rows where it is False (the padding of a last, partial batch) never enter the statistics. Non-finite activations are an error that names the
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

from jaxsnn._src import files, ir, parallel, runner
from jaxsnn._src.files import fingerprint
from jaxsnn._src.ir import OUTPUT
from jaxsnn._src.jitting import jit

HIST_MANTISSA_BITS = 7
_HIST_SHIFT = 23 - HIST_MANTISSA_BITS
HIST_BINS = (0x7F800000 >> _HIST_SHIFT) + 1  # the last bin holds +inf (and NaN)
PERCENTILE_RELATIVE_ERROR = 2.0 ** -(HIST_MANTISSA_BITS + 1)
_INT32_MAX = 2**31 - 1
_LEGACY_FORMAT = "jaxsnn-stats-v1"  # the .npz of stats before the jaxsnn file format


class Stats(NamedTuple):
  """Calibration statistics.

  Attributes:
    max: ``{site: array of the site's shape}`` in network order: each neuron's max ANN activation over the
      calibration data, and ``"output"``: the max logit per output unit.
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


@functools.partial(jit, static_argnums=(0, 5))
def _calibration_step(traced: ir.Traced, variables, x, mask, state, histogram: bool):
  rec, out = ir.ann_pass(traced, variables, x)
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
              mesh=None, progress: bool = False, checkpoint=None, checkpoint_every: int | None = None,
              micro_batch: int = runner.MICRO_BATCH, input_key: str = "image") -> Stats:
  """Runs the ANN over ``batches`` once and records the per-neuron max activation of every site and the output.

  The pass is jit-compiled (once per network program and batch shape, at module level, so calling ``calibrate``
  again does not compile again) and streams: only the running maxima (and histograms) are kept.

  Args:
    apply_fn: ``apply_fn(variables, x)``, the same function later given to :func:`jaxsnn.convert`.
    variables: the ANN's variables.
    batches: training batches in any form of the batch protocol (arrays, ``(x, labels[, mask])`` tuples, dicts
      ``{"image", "label", "mask"}``; labels are not read): never the test set. Masked-out rows (padding) never enter
      the statistics.
    histogram: also keep a per-site histogram of activations (``Stats.hist``), needed for percentile thresholds
      (``jaxsnn.thresholds(stats, "layer", percentile=99.99)``). It costs one scatter-add over every activation per
      batch, so it is off by default.
    mesh: a ``jax.sharding.Mesh`` to shard every batch over (its ``"batch"`` axis); default all local devices.
    progress: a tqdm progress bar.
    checkpoint: a file path: the running statistics are written there atomically every ``checkpoint_every``
      micro-batch groups, and a run that finds it (same network, variables and settings) skips the examples it
      covers.
    checkpoint_every: micro-batch groups between checkpoint writes; None (the default): once a minute of work.
    micro_batch: examples per device in each computation. The real examples of ``batches`` are cut into
      micro-batches of this size (the last one padded and masked), so the result depends only on the examples, their
      order and ``micro_batch``: how the batches are cut, padded or masked and how many devices run them change no
      number (XLA's kernels compute a row differently at different batch shapes on some CPUs).
    input_key: the input's key in dict batches.

  Returns:
    :class:`Stats`, its dicts in network order.

  Raises:
    ValueError: if ``batches`` is one array instead of an iterable of batches, is empty, or holds no unmasked
      example, or if the ANN produced non-finite activations (names the sites and how many values).

  Example:
    >>> stats = jaxsnn.calibrate(apply_fn, variables, [x_train[i:i + 500] for i in range(0, 10000, 500)])
  """
  caller = "jaxsnn.calibrate"
  apply_fn, variables = ir.split_variables(apply_fn, variables)
  mesh = parallel.batch_mesh(mesh, caller)
  variables = parallel.replicate(mesh, variables)
  net = {}

  def init(batch):
    program, net["traced"] = ir.trace(apply_fn, variables, batch.x, caller=caller)
    net["order"] = [s.name for s in program.sites]
    shapes, out_shape = ir.value_shapes(program)
    running = {k: jnp.zeros(s.shape[1:], s.dtype) for k, s in shapes.items()}
    running[OUTPUT] = jnp.full(out_shape.shape[1:], -jnp.inf, out_shape.dtype)
    net["per_sample"] = {k: int(np.prod(s.shape[1:], dtype=np.int64)) for k, s in shapes.items()}
    return {"max": running, "hist": {k: jnp.zeros(HIST_BINS, jnp.int32) for k in shapes} if histogram else {},
            "host_hist": {k: np.zeros(HIST_BINS, np.int64) for k in shapes} if histogram else {},
            "pending": 0, "bad": {k: jnp.zeros((), jnp.int32) for k in list(shapes) + [OUTPUT]}}

  def step(state, p: runner.Prepared):
    state = dict(state)
    if histogram:
      # Device counts are int32: move them to the host's int64 before any bin could overflow.
      grow = p.mask.shape[0] * max(net["per_sample"].values(), default=0)
      if grow > _INT32_MAX:
        raise ValueError(f"{caller}: a computation of {p.mask.shape[0]} examples has {grow} activations at one site, "
                         "more than an int32 histogram count holds; pass a smaller micro_batch with histogram=True.")
      if state["pending"] + grow > _INT32_MAX:
        state["host_hist"] = {k: np.asarray(v, np.int64) + np.asarray(state["hist"][k], np.int64)
                              for k, v in state["host_hist"].items()}
        state["hist"] = {k: jnp.zeros_like(v) for k, v in state["hist"].items()}
        state["pending"] = 0
      state["pending"] = int(state["pending"]) + grow
    state["max"], state["hist"], state["bad"] = _calibration_step(
        net["traced"], variables, p.x, p.device_mask, (state["max"], state["hist"], state["bad"]), bool(histogram))
    return state

  job = lambda batch: fingerprint(caller, net["traced"].key, bool(histogram), HIST_MANTISSA_BITS,  # noqa: E731
                                  arrays=variables)
  state, n = runner.fold(batches, step, init, caller=caller, mesh=mesh, micro_batch=micro_batch,
                         input_key=input_key, progress=progress,
                         checkpoint=checkpoint, fingerprint=job, checkpoint_every=checkpoint_every,
                         differs="another network, variables or histogram setting")
  bad = {k: int(v) for k, v in state["bad"].items() if int(v)}
  if bad:
    raise ValueError(f"{caller}: the ANN produced non-finite activations (NaN or inf) on the calibration data: "
                     + ", ".join(f"site '{k}': {v} values" for k, v in bad.items())
                     + ". Check the inputs (and their normalisation) and the variables; thresholds made of them "
                     "would be NaN.")
  if n == 0:
    raise ValueError(f"{caller}: every example of the calibration batches is masked out; nothing was measured.")
  order = net["order"] + [OUTPUT]
  out_hist = None
  if histogram:
    out_hist = {k: np.asarray(state["host_hist"][k], np.int64) + np.asarray(state["hist"][k], np.int64)
                for k in net["order"]}
  # Plain arrays on the default device, not tied to the mesh the pass ran on (a threshold used under another mesh
  # would otherwise clash with it).
  running = {k: jnp.asarray(np.asarray(state["max"][k])) for k in order}
  return Stats(max=running, num_samples=n, hist=out_hist)


# ----------------------------------------------------------------------------------------------------------------
# Save / load.
# ----------------------------------------------------------------------------------------------------------------

def save_stats(path: str | os.PathLike, stats: Stats) -> None:
  """Saves :class:`Stats` to a jaxsnn file (exact round trip with :func:`load_stats`), atomically.

  Site names come from the model's module paths, so they are the same every time the same model is traced. The file
  is the format of every jaxsnn artifact (:mod:`jaxsnn.files`): versioned and fingerprinted.

  Args:
    path: the file (``.jaxsnn`` by convention).
    stats: from :func:`calibrate`.

  Example:
    >>> jaxsnn.save_stats("stats.jaxsnn", stats)
    >>> jaxsnn.load_stats("stats.jaxsnn").num_samples == stats.num_samples
    True
  """
  files.write(path, "stats", {
      "max": {k: np.asarray(v) for k, v in stats.max.items()}, "num_samples": int(stats.num_samples),
      "hist_mantissa_bits": HIST_MANTISSA_BITS,
      "hist": None if stats.hist is None else {k: np.asarray(v, np.int64) for k, v in stats.hist.items()}})


def load_stats(path: str | os.PathLike) -> Stats:
  """Loads :class:`Stats` saved by :func:`save_stats` (also the ``.npz`` files of jaxsnn before its file format 1).

  Args:
    path: the file.

  Returns:
    :class:`Stats`.

  Raises:
    jaxsnn.files.FormatError: if the file is not a jaxsnn stats file (another kind, another format version,
      damaged or altered: the message says which).
    ValueError: if its histograms were written with a different histogram resolution.

  Example:
    >>> jaxsnn.save_stats("stats.jaxsnn", stats)
    >>> list(jaxsnn.load_stats("stats.jaxsnn").max) == list(stats.max)
    True
  """
  caller = "jaxsnn.load_stats"
  legacy = files.read_legacy_npz(path, _LEGACY_FORMAT)
  if legacy is not None:
    content = {"max": {k[4:]: v for k, v in legacy.items() if k.startswith("max:")},
               "num_samples": int(legacy["__num_samples__"]), "hist_mantissa_bits": int(legacy["__hist_bits__"]),
               "hist": {k[5:]: v for k, v in legacy.items() if k.startswith("hist:")} or None}
  else:
    content = files.read(path, "stats", caller=caller)
  if content["hist"] and content["hist_mantissa_bits"] != HIST_MANTISSA_BITS:
    raise ValueError(f"{caller}: histogram written with {content['hist_mantissa_bits']} mantissa bits; this "
                     f"version uses {HIST_MANTISSA_BITS}.")
  return Stats(max={k: jnp.asarray(v) for k, v in content["max"].items()}, num_samples=int(content["num_samples"]),
               hist=None if content["hist"] is None else {k: np.asarray(v) for k, v in content["hist"].items()})
