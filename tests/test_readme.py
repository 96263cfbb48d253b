"""The README's quick start runs as written (with a small trained-shape model in its namespace)."""

import pathlib
import re

import flax.linen as nn
import jax
import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


class Tiny(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x)))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


def test_quick_start_runs_as_written():
  text = README.read_text()
  block = re.search(r"## Quick start\s+```python\n(.*?)```", text, re.S).group(1)
  assert len(block.strip().splitlines()) == 7
  model = Tiny()
  x = jax.random.normal(jax.random.PRNGKey(0), (12, 6, 6, 1))
  variables = model.init(jax.random.PRNGKey(1), x)
  namespace = {"model": model, "variables": variables, "x_train": x[:6], "x_test": x[6:],
               "y_test": np.arange(6) % 3}
  exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
  acc = namespace["acc"]
  assert acc.shape == (256,)
  snn_pred = np.asarray(namespace["trace"].outputs[-1].argmax(-1))
  ann_pred = np.asarray(model.apply(variables, x[6:]).argmax(-1))
  assert (snn_pred == ann_pred).sum() >= 5  # converged to the ANN's answers (a near-tie may differ)
  assert round(float(acc[-1]) * 6) == (snn_pred == np.arange(6) % 3).sum()
