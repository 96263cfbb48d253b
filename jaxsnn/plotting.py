"""Plots of jaxsnn results (matplotlib, an optional dependency: ``pip install 'jaxsnn-convert[plot]'``).

* :func:`plot_information_loss`: the paper's Fig. 3 surface;
* :func:`plot_accuracy_vs_time`: accuracy after every T for several methods, with the ANN as a line (Fig. 4);
* :func:`plot_firing_rates`: firing rate per layer, positive and negative spikes apart (Fig. 5).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np


def _pyplot():
  try:
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
  except ImportError as e:  # pragma: no cover
    raise ImportError("jaxsnn.plotting needs matplotlib (pip install 'jaxsnn-convert[plot]').") from e
  return plt


def plot_information_loss(surface: Mapping[str, Any], alphas, steps, path: str | os.PathLike,
                          title: str | None = None, view: tuple[float, float] = (25.0, 45.0)) -> None:
  """Plots :func:`information_loss_surface` as the paper's Fig. 3 (log10 loss over alpha and T) to a PNG file.

  One 3-D surface per norm, side by side, on a shared z axis. Needs matplotlib (``pip install 'jaxsnn-convert[plot]'``).

  Args:
    surface: ``{norm: [len(alphas), len(steps)]}``.
    alphas: the alpha grid.
    steps: the T grid.
    path: where to write the PNG.
    title: optional figure title.
    view: ``(elevation, azimuth)`` of the 3-D view in degrees (the default looks into the low-loss valley).

  Raises:
    ImportError: if matplotlib is missing.
  """
  plt = _pyplot()
  alphas, steps = np.asarray(alphas, np.float64), np.asarray(steps, np.float64)
  logs = {}
  for norm, loss in surface.items():
    loss = np.asarray(loss, np.float64)
    positive = loss[loss > 0]
    floor = positive.min() / 10 if positive.size else 1e-12
    logs[norm] = np.log10(np.maximum(loss, floor))
  zmin = min(v.min() for v in logs.values())
  zmax = max(v.max() for v in logs.values())
  names = {"layer": "LayerNorm", "channel": "ChannelNorm", "neuron": "NeuronNorm"}
  fig = plt.figure(figsize=(5.5 * len(logs), 4.8))
  grid_t, grid_a = np.meshgrid(steps, alphas)
  for i, (norm, z) in enumerate(logs.items()):
    ax = fig.add_subplot(1, len(logs), i + 1, projection="3d")
    ax.plot_surface(grid_a, grid_t, z, cmap="viridis", vmin=zmin, vmax=zmax, linewidth=0, antialiased=True)
    ax.set_xlabel("alpha")
    ax.set_ylabel("T")
    ax.set_zlabel("log10 loss")
    ax.set_zlim(zmin, zmax)
    ax.view_init(*view)
    ax.set_title(names.get(norm, norm))
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
