"""Plots of jaxsnn results (matplotlib, an optional dependency: ``pip install 'jaxsnn-convert[plot]'``).

* :func:`plot_information_loss`: the paper's Fig. 3 surface;
* :func:`plot_accuracy_vs_time`: accuracy after every T for several methods, with the ANN as a line (Fig. 4);
* :func:`plot_firing_rates`: firing rate per layer, positive and negative spikes apart (Fig. 5);
* :func:`plot_recipes`: accuracy and energy against T, one line per recipe (or per run, with ``evaluate``'s
  ``record_steps``);
* from a recorded run (``jaxsnn.simulate(..., record=[site, ...], record_potentials=True)``):
  :func:`plot_raster` (spike raster per site), :func:`plot_membrane` (membrane potential with the threshold and the
  spikes), :func:`plot_rates_over_time` (each site's firing rate at every step).

The functions of recorded runs return the matplotlib figure when no ``path`` is given (a notebook shows it), and
write a PNG and close the figure when one is.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxsnn._src import checks


def _pyplot():
  try:
    import matplotlib
    if "matplotlib.pyplot" not in sys.modules:  # a script: files only; a notebook's (inline) backend is kept
      matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
  except ImportError as e:  # pragma: no cover
    raise ImportError("jaxsnn.plotting needs matplotlib (pip install 'jaxsnn-convert[plot]').") from e
  return plt


def _finish(fig, path):
  """Writes and closes the figure for a path; returns it otherwise."""
  if path is None:
    return fig
  fig.savefig(path, dpi=120)
  _pyplot().close(fig)
  return None


def _sites(spikes, caller: str) -> dict:
  """``{site: [T, batch, ...]}`` from a recording dict or one array."""
  if isinstance(spikes, Mapping):
    out = {str(k): np.asarray(v) for k, v in spikes.items()}
  else:
    out = {"": np.asarray(spikes)}
  if not out:
    raise ValueError(f"{caller}: nothing recorded: pass trace.spikes of simulate(..., record=[site, ...]).")
  for k, v in out.items():
    if v.ndim < 2:
      raise ValueError(f"{caller}: a recording is [T, batch, *site_shape]; {k or 'the array'} has shape {v.shape}.")
  return out


def _of_sample(a: np.ndarray, sample: int, caller: str) -> np.ndarray:
  """``[T, neurons]``: one sample of a ``[T, batch, ...]`` recording, its neurons flattened."""
  if not -a.shape[1] <= sample < a.shape[1]:
    raise ValueError(f"{caller}: sample {sample} is not in the recorded batch of {a.shape[1]}.")
  return a[:, sample].reshape(a.shape[0], -1)


def plot_raster(spikes, path: str | os.PathLike | None = None, *, sample: int = 0, max_neurons: int = 100,
                title: str | None = None):
  """Spike raster of one sample: a panel per recorded site, a row per neuron, a mark per spike (positive blue,
  negative red), time steps 1..T across.

  Args:
    spikes: ``trace.spikes`` (``{site: [T, batch, *site_shape]}``, from ``simulate(..., record=[...])``), or one such
      array.
    path: where to write the PNG; None returns the figure.
    sample: which sample of the batch.
    max_neurons: at most this many rows per site: the neurons that fire at least once in the run, evenly chosen
      among them in their flat order (the title says how many there are).
    title: optional figure title.

  Returns:
    The figure if ``path`` is None, else None.

  Raises:
    ValueError: for an empty recording or a sample outside the batch.
    ImportError: if matplotlib is missing.
  """
  caller = "jaxsnn.plotting.plot_raster"
  sites = _sites(spikes, caller)
  plt = _pyplot()
  fig, axes = plt.subplots(len(sites), 1, figsize=(7.5, 1.2 + 1.6 * len(sites)), sharex=True, squeeze=False)
  for ax, (name, rec) in zip(axes[:, 0], sites.items()):
    a = _of_sample(rec, sample, caller)
    steps = a.shape[0]
    active = np.flatnonzero((a != 0).any(axis=0))
    shown = active[np.unique(np.linspace(0, len(active) - 1, min(max_neurons, len(active))).round().astype(int))] \
        if len(active) else active
    for sign, color, label in ((1, "tab:blue", "positive"), (-1, "tab:red", "negative")):
      t, row = np.nonzero(a[:, shown] == sign)
      if len(t):
        ax.scatter(t + 1, row, marker="|", s=12, color=color, linewidths=1.0, label=f"{label} spikes")
    ax.set_ylim(-1, max(len(shown), 1))
    ax.set_xlim(0.5, steps + 0.5)
    ax.set_ylabel("neuron")
    ax.set_title(f"{name}: {len(shown)} of {len(active)} active neurons ({a.shape[1]} in all)", fontsize=9)
  axes[-1, 0].set_xlabel("time step t")
  handles = {l: h for ax in axes[:, 0] for h, l in zip(*ax.get_legend_handles_labels())}
  if handles:
    axes[0, 0].legend(handles.values(), handles.keys(), fontsize=8, loc="upper right")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return _finish(fig, path)


def plot_membrane(potentials, threshold, spikes=None, path: str | os.PathLike | None = None, *, neurons=None,
                  sample: int = 0, title: str | None = None):
  """Membrane potential of a few neurons of one site over time, with each neuron's threshold and its spikes.

  The potential is the state's ``v`` after each step (after the reset), so a neuron that fires at step t shows
  ``v - θ`` there: the marks say where it fired.

  Args:
    potentials: ``trace.potentials[site]``, ``[T, batch, *site_shape]``.
    threshold: ``snn.thresholds[site]`` (``site_shape``, or a scalar).
    spikes: ``trace.spikes[site]``, to mark the spikes (optional).
    path: where to write the PNG; None returns the figure.
    neurons: flat indices of the neurons in the site (default: the 3 that fire most in this sample).
    sample: which sample of the batch.
    title: optional title.

  Returns:
    The figure if ``path`` is None, else None.

  Raises:
    ValueError: for shapes that do not match or a neuron outside the site.
    ImportError: if matplotlib is missing.
  """
  caller = "jaxsnn.plotting.plot_membrane"
  v = _of_sample(np.asarray(potentials, np.float64), sample, caller)
  steps, n = v.shape
  theta = np.broadcast_to(np.asarray(threshold, np.float64), np.asarray(potentials).shape[2:]).reshape(-1)
  s = None if spikes is None else _of_sample(np.asarray(spikes), sample, caller)
  if s is not None and s.shape != v.shape:
    raise ValueError(f"{caller}: spikes {np.asarray(spikes).shape} and potentials {np.asarray(potentials).shape} "
                     "must be recordings of the same site.")
  if neurons is None:
    activity = (s != 0).sum(axis=0) if s is not None else np.abs(v).sum(axis=0)
    neurons = np.argsort(-activity, kind="stable")[:3]
  neurons = [int(i) for i in np.atleast_1d(neurons)]
  bad = [i for i in neurons if not 0 <= i < n]
  if bad:
    raise ValueError(f"{caller}: neurons {bad} are not in the site's {n} neurons (flat indices 0..{n - 1}).")
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7.5, 3.6))
  t = np.arange(1, steps + 1)
  for k, i in enumerate(neurons):
    color = f"C{k}"
    ax.step(t, v[:, i], where="mid", color=color, lw=1.2, label=f"neuron {i}, θ = {theta[i]:.3g}")
    ax.axhline(theta[i], color=color, ls="--", lw=0.8)
    if s is not None:
      for sign, marker in ((1, "^"), (-1, "v")):
        at = np.flatnonzero(s[:, i] == sign)
        ax.plot(t[at], v[at, i], marker, color=color, ms=5, ls="none")
  ax.axhline(0.0, color="k", lw=0.5)
  ax.set_xlabel("time step t")
  ax.set_ylabel("membrane potential v (after the step)")
  ax.set_title(title or "membrane potential; dashed: threshold θ; ▲/▼: positive / negative spike", fontsize=9)
  ax.legend(fontsize=8, loc="upper right")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  return _finish(fig, path)


def plot_rates_over_time(spikes, path: str | os.PathLike | None = None, *, window: int = 1,
                         title: str | None = None):
  """Each recorded site's firing rate at every step: spikes (positive and negative) per neuron, averaged over the
  site's neurons and the batch, optionally smoothed over a window of steps.

  Args:
    spikes: ``trace.spikes`` (``{site: [T, batch, *site_shape]}``).
    path: where to write the PNG; None returns the figure.
    window: a moving average over this many steps (1: none).
    title: optional title.

  Returns:
    The figure if ``path`` is None, else None.

  Raises:
    ValueError: for an empty recording or a window < 1.
    ImportError: if matplotlib is missing.
  """
  caller = "jaxsnn.plotting.plot_rates_over_time"
  sites = _sites(spikes, caller)
  window = checks.positive_int(window, "window", caller)
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7.5, 3.6))
  for name, rec in sites.items():
    rate = (rec != 0).reshape(rec.shape[0], -1).mean(axis=1)
    if window > 1:
      rate = np.convolve(rate, np.ones(window) / window, mode="valid")
    ax.plot(np.arange(len(rate)) + window, rate, label=name)
  ax.set_xlabel("time step t")
  ax.set_ylabel("spikes per neuron per step")
  if title:
    ax.set_title(title)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  return _finish(fig, path)


def plot_information_loss(surface: Mapping[str, Any], alphas, num_steps_grid, path: str | os.PathLike,
                          title: str | None = None, view: tuple[float, float] = (25.0, 45.0)) -> None:
  """Plots :func:`information_loss_surface` as the paper's Fig. 3 (log10 loss over alpha and T) to a PNG file.

  One 3-D surface per granularity, side by side, on a shared z axis. Needs matplotlib
  (``pip install 'jaxsnn-convert[plot]'``).

  Args:
    surface: ``{granularity: [len(alphas), len(num_steps_grid)]}``.
    alphas: the alpha grid.
    num_steps_grid: the T grid.
    path: where to write the PNG.
    title: optional figure title.
    view: ``(elevation, azimuth)`` of the 3-D view in degrees (the default looks into the low-loss valley).

  Raises:
    ImportError: if matplotlib is missing.
  """
  plt = _pyplot()
  alphas, grid = np.asarray(alphas, np.float64), np.asarray(num_steps_grid, np.float64)
  logs = {}
  for granularity, loss in surface.items():
    loss = np.asarray(loss, np.float64)
    positive = loss[loss > 0]
    floor = positive.min() / 10 if positive.size else 1e-12
    logs[granularity] = np.log10(np.maximum(loss, floor))
  zmin = min(v.min() for v in logs.values())
  zmax = max(v.max() for v in logs.values())
  names = {"layer": "LayerNorm", "channel": "ChannelNorm", "neuron": "NeuronNorm"}
  fig = plt.figure(figsize=(5.5 * len(logs), 4.8))
  grid_t, grid_a = np.meshgrid(grid, alphas)
  for i, (granularity, z) in enumerate(logs.items()):
    ax = fig.add_subplot(1, len(logs), i + 1, projection="3d")
    ax.plot_surface(grid_a, grid_t, z, cmap="viridis", vmin=zmin, vmax=zmax, linewidth=0, antialiased=True)
    ax.set_xlabel("alpha")
    ax.set_ylabel("T")
    ax.set_zlabel("log10 loss")
    ax.set_zlim(zmin, zmax)
    ax.view_init(*view)
    ax.set_title(names.get(granularity, granularity))
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_accuracy_vs_time(methods: Mapping[str, Any], path: str | os.PathLike, ann_accuracy: float | None = None,
                          title: str | None = None, log_steps: bool = True) -> None:
  """Plots accuracy (%) after every T for several methods to a PNG file, the ANN as a dashed line.

  Args:
    methods: ``{name: accuracies after t = 1..T}`` (fractions in [0, 1]).
    path: where to write the PNG.
    ann_accuracy: the ANN's accuracy (a fraction), drawn as a horizontal line.
    title: optional title.
    log_steps: a log2 axis for T.
  """
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for name, acc in methods.items():
    acc = np.asarray(acc, np.float64)
    ax.plot(np.arange(1, len(acc) + 1), 100 * acc, label=name)
  if ann_accuracy is not None:
    ax.axhline(100 * ann_accuracy, color="k", ls="--", lw=1, label="ANN")
  if log_steps:
    ax.set_xscale("log", base=2)
  ax.set_xlabel("time steps T")
  ax.set_ylabel("test accuracy (%)")
  ax.set_ylim(0, 100)
  if title:
    ax.set_title(title)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_recipes(recipes: Mapping[str, Mapping[int, tuple[float, float | None]]], path: str | os.PathLike,
                 ann_accuracy: float | None = None, title: str | None = None) -> None:
  """Accuracy and energy against T for several conversion recipes: two panels, one line per recipe.

  A recipe tuned for one T at a time (thresholds or calibration for a target T) gives one point per target; a recipe
  simulated once gives a point at every recorded T. Readable where one accuracy-vs-T curve per method is not.

  Args:
    recipes: ``{recipe: {T: (accuracy, energy ratio or None)}}``; accuracy a fraction in [0, 1], energy
      ``E_SNN / E_ANN`` (``jaxsnn.analysis.energy``).
    path: where to write the PNG.
    ann_accuracy: the ANN's accuracy (a fraction), a dashed line on the accuracy panel; the energy panel marks 1
      (the ANN's energy).
    title: optional title.
  """
  plt = _pyplot()
  fig, (acc_ax, e_ax) = plt.subplots(1, 2, figsize=(11, 4.6))
  styles = ["-o", "-s", "-^", "-D", "-v", "-P", "-X", "-*", "--o", "--s", "--^", "--D"]
  for i, (name, points) in enumerate(recipes.items()):
    steps = sorted(points)
    style = styles[i % len(styles)]
    acc_ax.plot(steps, [100 * points[t][0] for t in steps], style, ms=4, label=name)
    with_e = [t for t in steps if points[t][1] is not None]
    e_ax.plot(with_e, [points[t][1] for t in with_e], style, ms=4, label=name)
  if ann_accuracy is not None:
    acc_ax.axhline(100 * ann_accuracy, color="k", ls="--", lw=1, label="ANN")
  e_ax.axhline(1.0, color="k", ls="--", lw=1, label="ANN energy")
  for ax, label in ((acc_ax, "test accuracy (%)"), (e_ax, "E_SNN / E_ANN (Eq. 15)")):
    ax.set_xscale("log", base=2)
    ax.set_xlabel("time steps T")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  acc_ax.set_ylim(0, 100)
  e_ax.set_yscale("log")
  if title:
    fig.suptitle(title)
  handles, labels = acc_ax.get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
  fig.tight_layout(rect=(0, 0.04 * (len(labels) + 1) / 2 + 0.02, 1, 1))
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_firing_rates(positive: Mapping[str, float], negative: Mapping[str, float], path: str | os.PathLike,
                      average: float | None = None, title: str | None = None) -> None:
  """The paper's Fig. 5: firing rate per layer (spikes per neuron per step), positive and negative spikes stacked.

  Args:
    positive: ``{site: rate of positive spikes}`` in network order.
    negative: ``{site: rate of negative spikes}``.
    path: where to write the PNG.
    average: the network's average rate, drawn as a line.
    title: optional title.
  """
  plt = _pyplot()
  names = list(positive)
  pos = np.asarray([positive[n] for n in names])
  neg = np.asarray([negative.get(n, 0.0) for n in names])
  fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(names) + 2), 4.0))
  idx = np.arange(len(names))
  ax.bar(idx, pos, label="positive spikes", color="tab:blue")
  ax.bar(idx, neg, bottom=pos, label="negative spikes", color="tab:red")
  if average is not None:
    ax.axhline(average, color="k", ls="--", lw=1, label=f"network average {average:.4f}")
  top = max(float(np.max(pos + neg, initial=0.0)), average or 0.0)
  if top > 0:
    ax.set_ylim(0, 1.3 * top)  # room above the tallest bar for the legend
  ax.set_xticks(idx)
  ax.set_xticklabels([f"{i + 1}" for i in idx])
  ax.set_xlabel("layer (neuron site, in network order)")
  ax.set_ylabel("spikes per neuron per step")
  if title:
    ax.set_title(title)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3, axis="y")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
