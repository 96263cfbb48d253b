"""The README: its quick start and low-latency snippet run as written, and its main-job table is its result file's."""

import json
import re

import flax.linen as nn
import jax
import numpy as np

from conftest import ROOT

README = ROOT / "README.md"


class TinyCNN(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x)))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


def blocks():
  """The quick start's python blocks, in order."""
  section = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
  return re.findall(r"```python\n(.*?)```", section, re.S)


def namespace():
  model = TinyCNN()
  x = jax.random.normal(jax.random.PRNGKey(0), (12, 6, 6, 1))
  variables = model.init(jax.random.PRNGKey(1), x)
  y = np.asarray(model.apply(variables, x).argmax(-1), np.int32)
  return {"model": model, "variables": variables, "x_train": x[:6], "y_train": y[:6], "x_test": x[6:],
          "y_test": y[6:], "test_batches": [(x[6:], y[6:])]}, model, variables, x, y


def test_quick_start_runs_as_written():
  quick, low = blocks()[:2]
  assert len(quick.strip().splitlines()) <= 6 and len(low.strip().splitlines()) <= 3
  ns, model, variables, x, y = namespace()
  exec(compile(quick, str(README), "exec"), ns)  # noqa: S102
  acc = np.asarray(ns["acc"])
  assert acc.shape == (256,)
  snn_pred = np.asarray(ns["trace"].outputs[-1].argmax(-1))
  assert (snn_pred == y[6:]).sum() >= 5  # converged to the ANN's answers (a near-tie may differ)
  assert ns["report"].recipe == "paper"
  exec(compile(low, str(README), "exec"), ns)  # noqa: S102
  assert ns["ev"].num_steps == 8 and ns["ev"].count == 6
  assert [s.tool for s in ns["report"].stages][-2:] == ["calibrate_snn", "readout_delay"]


def test_the_main_jobs_table_is_its_result_file():
  """Every accuracy in the README's "Results of the main job" table is the committed experiments/results/main.json's
  (the file that `bash scripts/run.sh` with its defaults writes)."""
  result = json.loads((ROOT / "experiments/results/main.json").read_text())
  section = README.read_text().split("## Results of the main job", 1)[1].split("\n## ", 1)[0]
  header = next(line for line in section.splitlines() if line.startswith("| method |"))
  steps = [int(t) for t in re.findall(r"T=(\d+)", header.split("E_SNN")[0])]
  rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith(("| method", "|---"))]
  assert len(rows) == len(result["methods"]) >= 4
  for row in rows:
    cells = [c.strip().strip("*") for c in row.strip("|").split("|")]
    name = cells[0].replace(" (the paper)", "").replace(" (the usual baseline)", "")
    acc = result["methods"][name]["accuracy"]
    for t, cell in zip(steps, cells[1:1 + len(steps)]):
      if cell:
        assert float(cell) == round(100 * acc[t - 1], 2), (name, t, cell)
      else:
        assert t > len(acc), (name, t)


def section(title):
  return README.read_text().split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def test_every_model_style_block_runs_as_written_and_converges():
  import jax.numpy as jnp
  import jaxsnn
  blocks = re.findall(r"```python\n(.*?)```", section("Every JAX model style"), re.S)
  assert len(blocks) == 4
  x = jax.random.normal(jax.random.PRNGKey(0), (32, 4))
  names = []
  for block in blocks:
    ns = {"jax": jax, "jnp": jnp, "jaxsnn": jaxsnn, "x": x, "train_batches": [x[:16], x[16:]]}
    exec(compile(block, str(README), "exec"), ns)  # noqa: S102
    snn = ns["snn"]
    trace = jaxsnn.simulate(snn, x, 1024)
    ann = snn.apply_fn(snn.variables, x)
    assert float(jnp.abs(trace.outputs[-1] - ann).max()) < 0.03 * float(jnp.abs(ann).max()) + 1e-6
    names.append(snn.site_names)
  assert names[1] == ("layers/0/relu",) and names[2] == ("layers/0/relu", "layers/1/relu")
  assert names[3] == ("hidden/relu",)


def test_differentiable_simulation_block_runs_as_written():
  """After the quick start, with its own batches (fine-tuning cycles them in epochs)."""
  import jax.numpy as jnp
  quick, low = blocks()[:2]
  block = re.findall(r"```python\n(.*?)```", section("Differentiable simulation"), re.S)[0]
  ns, model, variables, x, y = namespace()
  exec(compile(quick, str(README), "exec"), ns)  # noqa: S102
  exec(compile(low, str(README), "exec"), ns)  # noqa: S102
  ns.update(jnp=jnp, jax=jax, x=x, val_batches=[(x, y)])
  exec(compile(block, str(README), "exec"), ns)  # noqa: S102
  grads = jax.tree_util.tree_leaves(ns["grads"])
  assert all(np.isfinite(np.asarray(g)).all() for g in grads) and any(float(jnp.abs(g).max()) > 0 for g in grads)
  assert ns["report"].tool == "finetune" and len(ns["report"].details["losses"]) == 20
  assert ns["report"].chose["epochs"] == 20  # one batch of 6 training examples, cycled


def test_the_readme_is_a_landing_page_whose_links_resolve():
  """At most 150 lines shown (the rest lives in docs/; the check comments of tests/test_numbers.py are not shown), and
  every relative link points at a file of this checkout."""
  text = README.read_text()
  shown = re.sub(r"^<!-- check\n.*?^-->\n", "", text, flags=re.S | re.M)
  assert len(shown.splitlines()) <= 150
  links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
  local = [link for link in links if not link.startswith(("http://", "https://"))]
  assert len(local) >= 15, local  # the guides, the results and the notebook are linked
  missing = [link for link in local if not (ROOT / link).exists()]
  assert not missing, missing
