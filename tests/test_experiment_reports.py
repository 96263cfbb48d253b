"""Tests for the experiment report helpers: recipes grouped over their targets, the cost table, and the plots, whose
drawn lines and bars are read back from the saved figure and compared with the result files they plot."""
import json
import pathlib
import struct
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import common  # noqa: E402
from jaxsnn import plotting  # noqa: E402


def method(name, accuracy, target=None, at=None, validation=None):
  out = {"name": name, "method": {"target": target}, "accuracy": accuracy, "at": at or {}}
  if validation is not None:
    out["validation"] = {"images": 500, "accuracy": validation}
  return out


def at(*pairs):
  return {str(t): {"average_firing_rate": r, "energy_ratio": e} for t, r, e in pairs}


REPORT = {
    "ann_accuracy": 0.9,
    "methods": {
        # The validation images prefer the first method at T = 2 though the second is better on the test set.
        "SNM + NeuronNorm": method("SNM + NeuronNorm", [0.1, 0.2, 0.3, 0.5], at=at((2, 0.1, 0.05), (4, 0.2, 0.1)),
                                   validation=[0.1, 0.75, 0.3, 0.5]),
        "SNM + NeuronNorm + θ/2 (T=2)": method("x", [0.6, 0.7], target=2, at=at((2, 0.3, 0.2)),
                                               validation=[0.6, 0.7]),
        "SNM + NeuronNorm + θ/2 (T=4)": method("y", [0.5, 0.6, 0.8, 0.85], target=4, at=at((4, 0.25, 0.4)),
                                               validation=[0.5, 0.6, 0.8, 0.84]),
    },
}


def test_recipes_join_the_targets_of_one_recipe_and_keep_every_recorded_step():
  r = common.recipes(REPORT)
  assert r == {"SNM + NeuronNorm": {2: (0.2, 0.05), 4: (0.5, 0.1)},
               "SNM + NeuronNorm + θ/2": {2: (0.7, 0.2), 4: (0.85, 0.4)}}


def test_cost_table_fills_a_targeted_method_only_at_its_target_and_chooses_on_validation_only():
  lines = common.cost_table(REPORT, num_steps_grid=(2, 4)).splitlines()
  row = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:]}
  assert "70.00 / 0.300 / 0.20" in row["SNM + NeuronNorm + θ/2 (T=2)"]
  assert row["SNM + NeuronNorm + θ/2 (T=2)"].endswith("0.20 |  |")  # nothing at T = 4
  # T = 2: the validation images choose the paper's method (its test accuracy is reported, 20 %), not the test
  # set's best (70 %), which is shown apart as a reference only.
  assert lines[-2] == ("| **chosen on 500 validation images: test % (points lost vs ANN)** | **20.00** (+70.00): "
                       "SNM + NeuronNorm | **85.00** (+5.00): SNM + NeuronNorm + θ/2 (T=4) |")
  assert lines[-1] == "| best on the test set (reference only, not a choice) | 70.00 (+20.00) | 85.00 (+5.00) |"
  assert common.chosen(REPORT, (2, 4)) == {2: ("SNM + NeuronNorm", 0.2, 0.75),
                                           4: ("SNM + NeuronNorm + θ/2 (T=4)", 0.85, 0.84)}
  # Without validation scores nothing is chosen: the test set never chooses.
  unscored = {"ann_accuracy": 0.9, "methods": {k: {kk: vv for kk, vv in v.items() if kk != "validation"}
                                               for k, v in REPORT["methods"].items()}}
  assert common.chosen(unscored, (2,)) == {2: None}
  assert "(no validation scores)" in common.cost_table(unscored, num_steps_grid=(2,)).splitlines()[-2]


@pytest.fixture
def saved_figures(monkeypatch):
  """The figures the plotting functions save, in order: their lines and bars read back after the PNG is written."""
  import matplotlib.figure
  figures, real = [], matplotlib.figure.Figure.savefig

  def savefig(self, *args, **kwargs):
    figures.append(self)
    return real(self, *args, **kwargs)

  monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
  return figures


def png_size_and_spread(path):
  """(width, height) from the PNG's header, and the spread of its decoded pixels (0 for a blank image)."""
  import matplotlib.image
  data = path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
  return struct.unpack(">II", data[16:24]), float(np.std(matplotlib.image.imread(path)))


def lines(ax):
  return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}


def test_plot_recipes_draws_what_the_result_file_holds(tmp_path, saved_figures):
  """experiments/main.py's figure of the committed main.json: one line per recipe through the file's accuracies
  (per cent) and energy ratios, a recipe tuned per target T joined over its targets, the ANN as a line."""
  report = json.loads((ROOT / "experiments/results/main.json").read_text())
  path = tmp_path / "main.png"
  plotting.plot_recipes(common.recipes(report), path, report["ann_accuracy"], title="t")
  assert png_size_and_spread(path)[0] == (11 * 120, round(4.6 * 120)) and png_size_and_spread(path)[1] > 0
  (fig,) = saved_figures
  accuracy, energy = (lines(ax) for ax in fig.axes)
  want_acc, want_energy = {}, {}
  for name, r in report["methods"].items():  # read from the file here, not through common.recipes
    target = r["method"]["target"]
    steps = [target] if target else sorted(int(t) for t in r["at"] if int(t) <= len(r["accuracy"]))
    recipe = name.split(" (T=")[0]
    for t in steps:
      want_acc.setdefault(recipe, {})[t] = 100 * r["accuracy"][t - 1]
      want_energy.setdefault(recipe, {})[t] = r["at"][str(t)]["energy_ratio"]
  assert len(want_acc) < len(report["methods"])  # a recipe tuned per target is one line
  for want, got in ((want_acc, accuracy), (want_energy, energy)):
    for recipe, points in want.items():
      assert got[recipe][0] == sorted(points)
      np.testing.assert_allclose(got[recipe][1], [points[t] for t in sorted(points)], rtol=1e-12)
  assert accuracy["ANN"][1] == [100 * report["ann_accuracy"]] * 2 and energy["ANN energy"][1] == [1.0, 1.0]
  assert set(accuracy) == set(want_acc) | {"ANN"}


@pytest.mark.parametrize("case", ["committed", "nothing fires"])
def test_plot_firing_rates_stacks_the_result_files_rates(case, tmp_path, saved_figures):
  """experiments/paper.py's Fig. 5 of a committed result: per site a bar of its positive rate with its negative
  rate stacked on top, the network's average as a line; and a figure also when nothing fires."""
  if case == "committed":
    result = json.loads((ROOT / "experiments/results/paper/fashion_mnist_small_cnn.json").read_text())
    at = result["methods"]["SNM + NeuronNorm"]["at"]["32"]
    positive, negative, average = at["positive_rates"], at["negative_rates"], at["average_firing_rate"]
    assert any(negative.values())
  else:
    positive, negative, average = {"a": 0.0, "b": 0.0}, {}, None
  path = tmp_path / "fig5.png"
  plotting.plot_firing_rates(positive, negative, path, average=average, title="t")
  (width, height), spread = png_size_and_spread(path)
  assert (width, height) == (round(120 * max(6.0, 0.45 * len(positive) + 2)), 4 * 120) and spread > 0
  (ax,) = saved_figures[0].axes
  pos_bars, neg_bars = ax.containers
  sites = list(positive)
  close = dict(rtol=0, atol=1e-12)  # a stacked bar's height is read back as top - bottom
  np.testing.assert_allclose([b.get_height() for b in pos_bars], [positive[s] for s in sites], **close)
  np.testing.assert_allclose([b.get_y() for b in pos_bars], [0.0] * len(sites), **close)
  np.testing.assert_allclose([b.get_height() for b in neg_bars], [negative.get(s, 0.0) for s in sites], **close)
  np.testing.assert_allclose([b.get_y() for b in neg_bars], [positive[s] for s in sites], **close)
  averages = [line.get_ydata()[0] for line in ax.get_lines() if line.get_label().startswith("network average")]
  assert averages == ([] if average is None else [average])


def test_qcfs_and_lowlatency_set_adds_the_stacked_recipe_per_target_after_the_qcfs_arms():
  methods = common.methods_from("qcfs+lowlatency", [4, 8])
  qcfs = [m.name for m in common.qcfs_methods((4, 8))]
  assert [m.name for m in methods[:len(qcfs)]] == qcfs
  extra = methods[len(qcfs):]
  assert [m.name for m in extra] == [
      f"SNM + NeuronNorm + θ/2 + T-aware θ + calibration + delayed readout (T={t})" for t in (4, 8)]
  assert all(m.norm == "neuron" and m.tuned and m.calibrated and m.delayed and m.potential == 0.5 for m in extra)
  # The set's names resolve one by one too (a result file's methods can be re-run by name).
  assert [m.name for m in common.methods_from(";".join(m.name for m in methods), [4, 8])] == [m.name for m in methods]
