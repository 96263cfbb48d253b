"""The walkthrough notebook: its committed outputs are its code's complete run, it runs top to bottom on the committed
checkpoint, and its numbers make sense.

The notebook is committed executed, outputs included: the docs site shows them, and its build fails when they are
missing or stale (``bash scripts/notebook.sh`` writes them; ``docs/notebook_outputs.py``). Here it is executed again,
in memory, in a kernel of this interpreter, with the working directory Jupyter would use (its own folder); the
executed copy goes to pytest's temporary directory and nothing is written into the repository (checked). The numbers
of a run differ slightly from CPU to CPU, so this run and the committed outputs are compared by structure (the same
cells print and draw), never number by number, and the paper's claims are checked on both summaries.

It runs on the real Fashion-MNIST, which ``scripts/test.sh`` prepares offline before pytest
(``bash scripts/setup_offline_data.sh fashion_mnist``); it is never skipped.
"""

import copy
import json
import os
import pathlib
import subprocess
import sys

import jax
import nbformat
import pytest
from nbclient.exceptions import CellExecutionError

from jaxsnn import training

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))
import notebook_outputs  # noqa: E402  (docs/notebook_outputs.py: runs, stamps and checks notebooks)

NOTEBOOK = notebook_outputs.WALKTHROUGH
CHECKPOINT = ROOT / "experiments" / "checkpoints" / "fashion_mnist_small_cnn.msgpack"  # the notebook's
MARKER = "NOTEBOOK_SUMMARY "
HINT = ("(if it failed loading the data: the notebook needs Fashion-MNIST for tensorflow-datasets, "
        "prepared offline by bash scripts/setup_offline_data.sh fashion_mnist, which scripts/test.sh runs)")
REFRESH = "bash scripts/notebook.sh writes the notebook with its outputs; commit it"


def _execute(nb, cwd: pathlib.Path, out: pathlib.Path):
  try:
    notebook_outputs.execute(nb, cwd)
  except CellExecutionError as e:
    pytest.fail(f"{NOTEBOOK.name} failed {HINT}:\n{e}")
  finally:
    nbformat.write(nb, out)  # the executed copy, for a look at a failure; never into the repository
  return nb


def _stdout(nb) -> str:
  return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                 if o.output_type == "stream" and o.name == "stdout")


def _summary(nb) -> dict:
  lines = [line for line in _stdout(nb).splitlines() if line.startswith(MARKER)]
  assert len(lines) == 1, "the last cell prints one summary line"
  return json.loads(lines[0][len(MARKER):])


def _shape(nb) -> list[set[str]]:
  """What each code cell shows: ``stdout`` and the MIME types of its figures and results (stderr, which carries the
  machine's warnings, and how the text is split into chunks, left out)."""
  return [{"stdout" if o.output_type == "stream" else "+".join(sorted(o.get("data", {})))
           for o in c.outputs if not (o.output_type == "stream" and o.name == "stderr")}
          for c in nb.cells if c.cell_type == "code"]


def _files(folder: pathlib.Path) -> dict[str, tuple[int, int]]:
  return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_the_committed_outputs_are_its_code_cells_complete_run():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  assert notebook_outputs.problems(nb) == [], REFRESH
  assert nb.metadata.kernelspec.name == "python3"
  _check_claims(_summary(nb), nb)  # the claims hold on the committed run too (its numbers are another CPU's)


@pytest.mark.parametrize("change, expected", [
    ("clear", ["not all run", "no outputs"]),        # Jupyter's "Clear All Outputs"
    ("edit", ["stale"]),                             # a code cell changed after the run
    ("unstamped", ["no fingerprint"]),               # executed by other means
    ("error", ["raised ZeroDivisionError"]),
    ("one_cell_rerun", ["not all run"]),             # execution counts out of order
])
def test_the_check_sees_missing_stale_and_failed_outputs(change, expected):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code"]
  if change == "clear":
    for c in code:
      c.outputs, c.execution_count = [], None
  elif change == "edit":
    code[3].source += "\nprint('one more line')"
  elif change == "unstamped":
    del nb.metadata[notebook_outputs.KEY]
  elif change == "error":
    code[-1].outputs = [nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="division by zero",
                                               traceback=[])]
  else:
    code[2].execution_count = len(code) + 1
  found = notebook_outputs.problems(nb)
  assert len(found) == len(expected) and all(e in f for e, f in zip(expected, found)), found


def test_the_refresh_command_runs_a_notebook_in_its_folder_and_writes_it_back(tmp_path):
  path = tmp_path / "tiny.ipynb"
  nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# tiny"), nbformat.v4.new_code_cell("x = 41"),
                                       nbformat.v4.new_code_cell("import os\nprint(x + 1, os.getcwd())")])
  nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
  nbformat.write(nb, path)
  path.chmod(0o640)
  command = [sys.executable, str(ROOT / "docs" / "notebook_outputs.py"), str(path)]
  done = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  written = nbformat.read(path, as_version=4)
  assert notebook_outputs.problems(written) == []
  assert written.cells[2].outputs[0].text == f"42 {tmp_path.resolve()}\n"
  assert (path.stat().st_mode & 0o777) == 0o640 and sorted(os.listdir(tmp_path)) == ["tiny.ipynb"]
  # A cell that fails: the command says so and leaves the file as it was.
  written.cells[2].source = "1 / 0"
  nbformat.write(written, path)
  before = path.read_bytes()
  done = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert done.returncode != 0 and "ZeroDivisionError" in done.stderr
  assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["tiny.ipynb"]


def test_finds_the_repository_from_the_root(tmp_path):
  # Jupyter started at the repository root: the first cell (paths and imports) still finds this checkout.
  nb = nbformat.read(NOTEBOOK, as_version=4)
  first = next(c for c in nb.cells if c.cell_type == "code")
  nb.cells = [first]
  out = _stdout(_execute(nb, ROOT, tmp_path / "first_cell.ipynb"))
  assert f"repository: {ROOT}\n" in out
  assert f"jaxsnn:     {ROOT / 'jaxsnn'}\n" in out


def test_notebook_runs_top_to_bottom(tmp_path):
  committed = nbformat.read(NOTEBOOK, as_version=4)
  folder = _files(NOTEBOOK.parent)
  nb = _execute(copy.deepcopy(committed), NOTEBOOK.parent, tmp_path / NOTEBOOK.name)
  assert _files(NOTEBOOK.parent) == folder, "the run wrote into the repository (the notebook's folder)"
  s = _summary(nb)
  print(f"notebook: {s['seconds']} s wall, {s['cpu_seconds']} s CPU in the kernel")

  # This interpreter and this checkout's jaxsnn.
  assert pathlib.Path(s["python"]).resolve() == pathlib.Path(sys.executable).resolve()
  assert pathlib.Path(s["jaxsnn"]) == ROOT / "jaxsnn" / "__init__.py"
  assert pathlib.Path(s["repo_root"]) == ROOT
  _check_claims(s, nb)

  # The committed outputs are what this code gives now, cell by cell (its numbers aside: another CPU's).
  notebook_outputs.stamp(nb)
  assert notebook_outputs.problems(nb) == []
  assert _shape(committed) == _shape(nb), REFRESH


def _check_claims(s: dict, nb) -> None:
  # Every figure is drawn inline.
  images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
  assert images == sum(c.source.count("plt.show()") for c in nb.cells if c.cell_type == "code") >= 6

  # The paper's claims on the committed checkpoint.
  t_max, t_low = str(s["t_max"]), str(s["t_low"])
  ann = s["ann_accuracy"]
  snm, ifl = s["accuracy"]["SNM + NeuronNorm"], s["accuracy"]["IF + LayerNorm"]
  assert ann > 0.9
  assert abs(snm[t_max] - ann) <= 0.02, (snm, ann)  # converged to the ANN
  assert snm[t_low] >= ifl[t_low] + 0.10, (snm, ifl)  # NeuronNorm + SNM works at low T, LayerNorm + IF does not
  assert snm["1"] < 0.2 and ifl["1"] < 0.2  # nothing has fired after one step: chance

  # Conversion error shrinks with T at every site.
  err = s["conversion_error"]
  for name in ("SNM + NeuronNorm", "IF + LayerNorm"):
    low, high = err[f"{name} T={t_low}"], err[f"{name} T={t_max}"]
    assert all(0 <= high[k] < low[k] for k in low), (name, low, high)
  assert err[f"SNM + NeuronNorm T={t_max}"]["output"] < 0.1

  # Information loss: LayerNorm loses more than NeuronNorm; gradients are finite and the relaxed one is checked.
  for t in (t_low, t_max):
    assert s["information_loss_alpha1"]["layer"][t] > s["information_loss_alpha1"]["neuron"][t] > 0
  g = s["grad_alpha"]
  assert g["all_finite"]
  assert g["relaxed"] == pytest.approx(g["relaxed_central_difference"], rel=0.05, abs=1e-3)
  assert all(0 < a < 1 for a in s["alpha_fit"].values())
  fitted = s["accuracy_t_low"][f"IF + LayerNorm, α fitted for T={t_low}"]
  assert fitted >= s["accuracy_t_low"]["IF + LayerNorm"] + 0.10  # minimising the loss for T pays at T

  # Activity and energy.
  for run, rate in s["average_firing_rate"].items():
    assert 0 < rate < 1, run
  for run, ratio in s["energy_ratio"].items():
    assert 0 < ratio < float("inf"), run
  # Differentiable analysis: surrogate gradients of the conversion loss reach every site's thresholds and every layer's
  # weights, finite; fine-tuning through the SNN keeps the best iterate on validation images.
  d = s["differentiable"]
  assert d["t"] == 8 and 0 < d["conversion_loss"] < float("inf") and 0 < d["conversion_loss_finetuned"] < float("inf")
  assert set(d["threshold_grad"]) == set(d["relative_error"]) and all(0 < g < float("inf")
                                                                      for g in d["threshold_grad"].values())
  kernels = {"/".join(str(getattr(k, "key", k)) for k in path[:-1])  # every weighted layer of the checkpoint
             for path, _ in jax.tree_util.tree_flatten_with_path(training.load_variables(CHECKPOINT)["params"])[0]
             if path[-1].key == "kernel"}
  assert set(d["kernel_grad"]) == kernels and len(kernels) == 6  # the SmallCNN: 4 convolutions, 2 dense layers
  assert all(0 < g < float("inf") for g in d["kernel_grad"].values())
  steps, accs = zip(*d["validation"])
  assert steps == (0, 10, 20) and all(0.5 < a <= 1 for a in accs)
  assert all(0.5 < a <= 1 for a in d["accuracy"].values())
  # Energy grows with T at a similar firing rate.
  assert s["energy_ratio"][f"SNM + NeuronNorm T={t_max}"] > s["energy_ratio"][f"SNM + NeuronNorm T={t_low}"]
