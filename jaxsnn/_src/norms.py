"""Threshold rules: per-neuron (NeuronNorm), channel- and layer-wise maxima, layer-wise percentiles.

Each rule turns calibration statistics (:class:`jaxsnn.Stats`, from training data) into a thresholds pytree
``{site: array of the site's shape}`` for :func:`jaxsnn.convert`. Rules that pick thresholds for a target number of
time steps are in :mod:`jaxsnn._src.thresholds`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxsnn._src.calibrate import Stats, hist_bin_points
from jaxsnn._src import checks, files
from jaxsnn._src.checks import DEFAULT_GRANULARITY
_LEGACY_FORMAT = "jaxsnn-stats-v1-thresholds"  # the .npz of thresholds before the jaxsnn file format


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
  points = hist_bin_points()
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


def normalize(m, granularity: str):
  """Per-neuron maxima ``m`` -> thresholds of the same shape at ``granularity`` (the max over each neuron, channel
  or the whole site)."""
  m = jnp.maximum(jnp.asarray(m), 0)
  if granularity == "layer":
    return jnp.broadcast_to(m.max(), m.shape)
  if granularity == "channel" and m.ndim > 1:
    return jnp.broadcast_to(m.max(axis=tuple(range(m.ndim - 1)), keepdims=True), m.shape)
  return m


def thresholds(stats: Stats, granularity: str = DEFAULT_GRANULARITY, alpha: float = 1.0,
               percentile: float | None = None) -> dict:
  """Turns calibration statistics into a thresholds pytree for :func:`jaxsnn.convert`.

  Args:
    stats: from :func:`calibrate`.
    granularity: ``"neuron"`` (the default: NeuronNorm, each neuron's own max, the paper's method), ``"channel"``
      (the max over each channel, the last axis, as Spiking-YOLO's channel-wise norm), or ``"layer"`` (one max per
      site, LayerNorm: Rueckauer et al. 2017).
    alpha: scale applied to every threshold (the paper's Fig. 3 alpha).
    percentile: with ``granularity="layer"`` only: use this percentile (e.g. 99.9 or 99.99) of the site's positive
      activations instead of its max (Rueckauer et al. 2017); needs ``calibrate(..., histogram=True)``. See
      :func:`site_percentiles` for the error bound.

  Returns:
    ``{site: array of the site's shape}`` including ``"output"`` (max logit per class at ``granularity``, clipped
    at 0; the percentile applies to the ReLU sites only).

  Raises:
    ValueError: for an unknown granularity, a non-positive alpha, or a percentile without ``granularity="layer"`` or
      a histogram.

  Example:
    >>> th = jaxsnn.thresholds(stats, "layer", percentile=99.99)
  """
  caller = "jaxsnn.thresholds"
  checks.granularity(granularity, caller)
  if not alpha > 0:
    raise ValueError(f"{caller}: alpha must be > 0; got {alpha!r}.")
  pct = None
  if percentile is not None:
    if granularity != "layer":
      raise ValueError(f"{caller}: percentile thresholds are layer-wise (Rueckauer et al. 2017); use "
                       f"granularity='layer' with percentile={percentile!r}, got granularity={granularity!r}.")
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
      m = normalize(m, granularity)
    out[name] = m * alpha
  return out


# ----------------------------------------------------------------------------------------------------------------
# Save / load.
# ----------------------------------------------------------------------------------------------------------------

def save_thresholds(path: str | os.PathLike, thresholds: Mapping[str, Any]) -> None:
  """Saves a thresholds dict ``{site: array}`` to a jaxsnn file (exact round trip with :func:`load_thresholds`),
  atomically: the format of every jaxsnn artifact (:mod:`jaxsnn.files`), versioned and fingerprinted.

  Args:
    path: the file (``.jaxsnn`` by convention).
    thresholds: ``{site: array}`` (e.g. from :func:`thresholds`).

  Example:
    >>> jaxsnn.save_thresholds("thresholds.jaxsnn", jaxsnn.thresholds(stats))
  """
  files.write(path, "thresholds", {k: np.asarray(v) for k, v in thresholds.items()})


def load_thresholds(path: str | os.PathLike) -> dict:
  """Loads thresholds saved by :func:`save_thresholds` (also the ``.npz`` files of jaxsnn before its file format 1).

  Args:
    path: the file.

  Returns:
    ``{site: jax array}``, in the saved order.

  Raises:
    jaxsnn.files.FormatError: if the file is not a jaxsnn thresholds file (another kind, another format version,
      damaged or altered: the message says which).

  Example:
    >>> jaxsnn.save_thresholds("thresholds.jaxsnn", jaxsnn.thresholds(stats))
    >>> th = jaxsnn.load_thresholds("thresholds.jaxsnn")
  """
  legacy = files.read_legacy_npz(path, _LEGACY_FORMAT)
  if legacy is not None:
    return {k[3:]: jnp.asarray(v) for k, v in legacy.items() if k.startswith("th:")}
  return {k: jnp.asarray(v) for k, v in files.read(path, "thresholds", caller="jaxsnn.load_thresholds").items()}


