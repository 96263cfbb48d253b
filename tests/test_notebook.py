"""The walkthrough notebook runs top to bottom on the committed checkpoint, and its numbers make sense.

It runs on the real Fashion-MNIST, which ``scripts/test.sh`` prepares offline before pytest
(``bash scripts/setup_offline_data.sh fashion_mnist``); it is never skipped. The notebook is executed in memory
(the committed file is only read) in a kernel of this interpreter, with the working directory Jupyter would use.
"""

import json
import pathlib
import sys

import jax
import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from jaxsnn import training

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "experiments" / "notebooks" / "walkthrough.ipynb"
CHECKPOINT = ROOT / "experiments" / "checkpoints" / "fashion_mnist_small_cnn.msgpack"  # the notebook's
MARKER = "NOTEBOOK_SUMMARY "
CELL_TIMEOUT_S = 900  # one cell; the whole notebook takes a few minutes on 2 CPU cores
HINT = ("(if it failed loading the data: the notebook needs Fashion-MNIST for tensorflow-datasets, "
        "prepared offline by bash scripts/setup_offline_data.sh fashion_mnist, which scripts/test.sh runs)")


def _kernel_manager() -> AsyncKernelManager:
  # No kernelspec directory is searched, so only ipykernel's built-in python3 spec is found, and it launches
  # sys.executable: this .venv's interpreter, whatever kernels the machine or the user has registered.
  return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))


def _execute(nb, cwd: pathlib.Path, out: pathlib.Path):
  client = NotebookClient(nb, km=_kernel_manager(), timeout=CELL_TIMEOUT_S, allow_errors=False,
                          resources={"metadata": {"path": str(cwd)}})
  try:
    client.execute(cleanup_kc=True)
  except CellExecutionError as e:
    pytest.fail(f"{NOTEBOOK.name} failed {HINT}:\n{e}")
  finally:
    nbformat.write(nb, out)  # the executed copy, for a look at a failure; never the committed file
  return nb


def _stdout(nb) -> str:
  return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                 if o.output_type == "stream" and o.name == "stdout")


def test_committed_without_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code and all(not c.outputs and c.execution_count is None for c in code), \
      "commit the notebook with its outputs cleared (it stays diffable; this test executes it)"
  assert nb.metadata.kernelspec.name == "python3"


def test_finds_the_repository_from_the_root(tmp_path):
  # Jupyter started at the repository root: the first cell (paths and imports) still finds this checkout.
  nb = nbformat.read(NOTEBOOK, as_version=4)
  first = next(c for c in nb.cells if c.cell_type == "code")
  nb.cells = [first]
  out = _stdout(_execute(nb, ROOT, tmp_path / "first_cell.ipynb"))
  assert f"repository: {ROOT}\n" in out
  assert f"jaxsnn:     {ROOT / 'jaxsnn'}\n" in out


def test_notebook_runs_top_to_bottom(tmp_path):
  nb = _execute(nbformat.read(NOTEBOOK, as_version=4), NOTEBOOK.parent, tmp_path / NOTEBOOK.name)
  nbformat.write(nb, ROOT / "docs" / "_executed" / NOTEBOOK.name)  # the docs site shows this run (docs/hooks.py)
  lines = [line for line in _stdout(nb).splitlines() if line.startswith(MARKER)]
  assert len(lines) == 1, "the last cell prints one summary line"
  s = json.loads(lines[0][len(MARKER):])
  print(f"notebook: {s['seconds']} s wall, {s['cpu_seconds']} s CPU in the kernel")

  # This interpreter and this checkout's jaxsnn.
  assert pathlib.Path(s["python"]).resolve() == pathlib.Path(sys.executable).resolve()
  assert pathlib.Path(s["jaxsnn"]) == ROOT / "jaxsnn" / "__init__.py"
  assert pathlib.Path(s["repo_root"]) == ROOT

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
