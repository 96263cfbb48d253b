"""Every example in the docstrings of the public API runs (the API pages show them; an example that no longer runs is a
bug of the docs).

The docstrings of the public modules (:data:`jaxsnn._src.public.MODULES`), of their public names and of those names'
public methods hold two kinds of example: doctest sessions (``>>>`` lines) and literal blocks (an indented block after
a line that ends with ``::``; in a module's docstring, any indented block). Each runs here, in order within its
docstring, in a namespace made of its module's globals and a few small objects that the examples assume (a tiny CNN,
its data and its converted SNN: ``apply_fn``, ``variables``, ``x``, ``x_train``, ``snn``, ``trace``, ... see
:func:`namespace`). A session's shown output is compared as doctest compares it; a line that shows no output may print
anything. The working directory is a fresh temporary one in which ``experiments/`` is the repository's (read-only use:
nothing is written into the repository).

A block that cannot run here is listed in :data:`NOT_RUN` with the reason; the list is checked to hold only blocks that
exist.
"""

from __future__ import annotations

import contextlib
import doctest
import functools
import importlib
import inspect
import io
import re
import textwrap
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsnn
from conftest import ROOT
from jaxsnn._src import public


class Example(NamedTuple):
  id: str  # the public path of the documented object, and the block's index in its docstring: "jaxsnn.simulate#0"
  module: str  # the module whose globals the example sees
  kind: str  # "doctest" or "literal"
  code: str  # the literal block's code; for a doctest session, its whole docstring text (parsed when run)


# Blocks that cannot run in a test, and why.
NOT_RUN = {
    "jaxsnn.training#0": "a 12-epoch training run on the real Fashion-MNIST; tests/test_training.py runs "
                         "train_and_evaluate on small data",
    "jaxsnn.data#0": "reads 55,000 real Fashion-MNIST images; tests/test_data.py covers load and batches",
    "jaxsnn.xla#0": "sets XLA's flags, which only a process that has not started JAX reads; tests/test_xla.py runs "
                    "it in a fresh process",
    "jaxsnn.information_loss#0": "a formula (paper Eq. 12), not code",
    "jaxsnn.recipes#0": "one line per recipe, each for its own kind of network (a QCFS-trained one for qcfs); each "
                        "recipe's own example runs",
}

# A literal block: after a line ending in "::" and a blank line, the lines indented deeper (blank lines included). In a
# module's docstring, whose text is not indented, every indented block after a blank line is one.
_BLOCK = r"(?:[ \t]*\n)+(?P<block>(?P<indent>[ \t]+)\S.*\n(?:(?:(?P=indent).*|[ \t]*)\n)*)"
# Examples over ~10 s here (the fast tier leaves them out): a full-width VGG16 initialised and applied eagerly, and
# the optimisation loops run for the thousands of steps their examples show.
SLOW = {"jaxsnn.models#0", "jaxsnn.finetune#>>>", "jaxsnn.quantize_for_conversion#>>>", "jaxsnn.recipes.few_steps#>>>"}

LITERAL = re.compile(r"::[ \t]*\n" + _BLOCK)
MODULE_BLOCK = re.compile(r"\n" + _BLOCK)


def documented() -> list[tuple[str, object]]:
  """``(public path, object)`` of every public module, public name and public method, each object once (at its first
  public path, in the order of :data:`jaxsnn._src.public.MODULES`)."""
  seen, out = set(), []

  def add(path, obj):
    if id(obj) not in seen and (obj.__doc__ or "").strip():
      seen.add(id(obj))
      out.append((path, obj))

  for module_name in public.MODULES:
    module = importlib.import_module(module_name)
    add(module_name, module)
    for name in public.names(module):
      obj = getattr(module, name)
      if inspect.isfunction(obj) or inspect.isclass(obj):
        add(f"{module_name}.{name}", obj)
      if inspect.isclass(obj):
        for attr, member in vars(obj).items():
          member = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
          if not attr.startswith("_") and inspect.isfunction(member):
            add(f"{module_name}.{name}.{attr}", member)
  return out


def examples() -> list[Example]:
  out = []
  for path, obj in documented():
    doc = inspect.cleandoc(obj.__doc__) + "\n"
    module = obj.__name__ if inspect.ismodule(obj) else obj.__module__
    pattern = MODULE_BLOCK if inspect.ismodule(obj) else LITERAL
    blocks = [Example(f"{path}#{i}", module, "literal", textwrap.dedent(m["block"]).strip("\n") + "\n")
              for i, m in enumerate(pattern.finditer(doc)) if not m["block"].lstrip().startswith(">>>")]
    if ">>>" in doc:
      blocks.append(Example(f"{path}#>>>", module, "doctest", doc))
    out += blocks
  return out


EXAMPLES = examples()


# ---- what the examples assume -------------------------------------------------------------------------------------
class TinyCNN(nn.Module):
  """conv4 3x3 - BatchNorm - ReLU - avg pool - Dense(3), on 6x6x1 inputs."""
  act: object = nn.relu

  @nn.compact
  def __call__(self, x, train=False):
    x = self.act(nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x)))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


@functools.cache
def namespace() -> dict:
  """The names the examples assume, built once: a tiny CNN, its data (labels: the ANN's own answers), statistics, the
  SNN converted by the paper's recipe and a trace of it."""
  from jax.interpreters import mlir

  from jaxsnn import data, training
  model = TinyCNN()
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (10_000, 6, 6, 1)).astype(np.uint8)
  m, s = (0.5,), (0.25,)
  x_all = jnp.asarray(data.normalize(images, m, s))
  variables = model.init(jax.random.PRNGKey(1), x_all[:2])
  apply_fn = lambda v, x: model.apply(v, x, train=False)  # noqa: E731
  labels = np.asarray(jax.jit(apply_fn)(variables, x_all).argmax(-1), np.int32)
  x, y = x_all[:16], labels[:16]
  train_batches = [(x_all[i:i + 256], labels[i:i + 256]) for i in range(0, 1024, 256)]
  val_batches = [(x_all[9000:9256], labels[9000:9256])]
  snn, _ = jaxsnn.recipes.paper(apply_fn, variables, [x_all[:512]])
  stats = jaxsnn.calibrate(apply_fn, variables, [x_all[:512]], histogram=True)  # (thresholds: percentiles)
  acts = jaxsnn.analysis.site_activations(apply_fn, variables, x_all[:64])
  return {
      "jax": jax, "jnp": jnp, "np": np, "nn": nn, "functools": functools, "jaxsnn": jaxsnn, "mlir": mlir,
      "data": data, "training": training,
      "model": model, "variables": variables, "apply_fn": apply_fn,
      "x": x, "y": y, "x_train": x_all, "x_test": x_all[9000:9100], "y_test": labels[9000:9100],
      "train_batches": train_batches, "val_batches": val_batches,
      "few_train_batches": train_batches[:1], "other_train_batches": train_batches[1:],
      "test_batches": [(x_all[i:i + 256], labels[i:i + 256]) for i in range(9000, 9768, 256)],
      "augmented_epochs": train_batches,
      "test": data.Arrays(images[9000:], labels[9000:]), "m": m, "s": s,
      "snn": snn, "stats": stats, "trace": jaxsnn.simulate(snn, x, 32), "acts": acts, "site": snn.site_names[0],
      "frames": jnp.stack([x] * 8),
  }


# Per-example names over the shared ones.
def _cifar_input():
  return {"x": jnp.zeros((2, 32, 32, 3))}


def _qcfs_model():
  model = TinyCNN(act=jaxsnn.models.qcfs_activation(levels=4))
  return {"model": model, "variables": model.init(jax.random.PRNGKey(1), jnp.zeros((2, 6, 6, 1)))}


def _dense_layer():
  """register_rule's example: a dense layer's weights, inputs and its ReLU site's thresholds."""
  rng = np.random.default_rng(0)
  return {"w": jnp.asarray(rng.normal(0, 1, (4, 5)), jnp.float32),
          "x": jnp.asarray(rng.normal(0, 1, (6, 4)), jnp.float32), "thresholds": {"relu": jnp.ones(5)}}


OVERRIDES = {
    "jaxsnn.register_rule#>>>": _dense_layer,
    "jaxsnn.models#0": _cifar_input,
    "jaxsnn.training.load_trained#>>>": _cifar_input,
    "jaxsnn.recipes.quantized#>>>": _qcfs_model,
}


def run(example: Example, ns: dict) -> None:
  if example.kind == "literal":
    exec(compile(example.code, example.id, "exec"), ns)  # noqa: S102
    return
  checker, flags = doctest.OutputChecker(), doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
  for ex in doctest.DocTestParser().get_examples(example.code):
    code = compile(ex.source, example.id, "single")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      exec(code, ns)  # noqa: S102  ("single": an expression's value is printed, as in a session)
    if ex.want and not checker.check_output(ex.want, out.getvalue(), flags):
      raise AssertionError(f"{example.id}: {ex.source.strip()!r} printed {out.getvalue()!r}, the docstring shows "
                           f"{ex.want!r}")


# ---- the tests ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("example", [pytest.param(e, id=e.id, marks=[pytest.mark.slow] if e.id in SLOW else [])
                                     for e in EXAMPLES if e.id not in NOT_RUN])
def test_the_docstring_example_runs(example, tmp_path, monkeypatch):
  (tmp_path / "experiments").symlink_to(ROOT / "experiments")
  monkeypatch.chdir(tmp_path)
  ns = {**vars(importlib.import_module(example.module)), **namespace()}
  ns.update(OVERRIDES.get(example.id, dict)())
  run(example, ns)


def test_the_examples_are_found_and_the_skipped_ones_exist():
  ids = {e.id for e in EXAMPLES}
  assert set(NOT_RUN) <= ids and SLOW <= ids
  assert {"jaxsnn.register_rule#>>>", "jaxsnn.SNM#>>>", "jaxsnn#0", "jaxsnn#1", "jaxsnn.models#0"} <= ids
  assert len([e for e in EXAMPLES if e.kind == "doctest"]) >= 25


def test_the_runner_checks_shown_output_and_sees_a_failing_example():
  ns = {}
  run(Example("t#>>>", "m", "doctest", ">>> x = 2\n>>> x + 1\n3\n>>> print('anything')\n"), ns)
  with pytest.raises(AssertionError, match=r"printed '4\\n', the docstring shows '3\\n'"):
    run(Example("t#>>>", "m", "doctest", ">>> 2 + 2\n3\n"), ns)
  with pytest.raises(NameError):
    run(Example("t#0", "m", "literal", "undefined_name\n"), ns)
