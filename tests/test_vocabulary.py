"""One vocabulary across the public API and the scripts (issue 34 item 3): ``num_steps`` is T, ``iterations`` an
optimiser's updates, ``granularity`` one axis with one set of values and one default, data-stream options keyword-only.

Read from the signatures of every public function and class of ``jaxsnn._src.public.MODULES`` and from the
``argparse`` flags of every script in experiments/ and benchmarks/ (with ``ast``: nothing is run).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re

import numpy as np
import pytest

import jaxsnn
from conftest import ROOT
from jaxsnn._src import checks, public

# Words that said two things before: "steps" (T, a grid of T, or optimiser steps) and "norm" (the granularity).
RETIRED = {"steps", "norm", "norms"}
STEP_NAMES = {"num_steps", "record_steps", "num_steps_grid"}  # T, the steps t recorded, several T
STREAM_OPTIONS = {"block_size", "micro_batch", "mesh", "progress", "checkpoint", "checkpoint_every", "input_key"}
# Known exceptions, each with its reason. The list only shrinks.
EXCEPTIONS = {
    "jaxsnn.Recorded.steps": "the recorded time steps t, a result field (what evaluate(record_steps=...) recorded)",
    "jaxsnn.models.BasicBlock.norm": "the normalisation layer to build (nn.BatchNorm), not a granularity",
    "jaxsnn.plotting.plot_accuracy_vs_time.log_steps": "a bool: the steps t on a log axis",
}


def public_callables():
  """``(qualified name, object, signature)`` of every public function and class (its constructor)."""
  out = []
  for module_name in public.MODULES:
    module = importlib.import_module(module_name)
    for name in public.names(module):
      obj = getattr(module, name)
      if inspect.isfunction(obj) or inspect.isclass(obj):
        try:
          signature = inspect.signature(obj)
        except (TypeError, ValueError):
          continue
        out.append((f"{module_name}.{name}", obj, signature))
  return out


CALLABLES = public_callables()


def test_the_walk_sees_the_api():
  names = {n for n, _, _ in CALLABLES}
  assert {"jaxsnn.simulate", "jaxsnn.tune_snn", "jaxsnn.analysis.information_loss_surface",
          "jaxsnn.recipes.quantized", "jaxsnn.results.table"} <= names


def test_no_public_parameter_uses_a_retired_word_or_another_name_for_t():
  found = []
  for qualified, _, signature in CALLABLES:
    for p in signature.parameters.values():
      word = p.name.lower()
      retired = word in RETIRED or (word.endswith("_steps") and word not in STEP_NAMES)
      if retired and f"{qualified}.{p.name}" not in EXCEPTIONS:
        found.append(f"{qualified}({p.name}=)")
  assert found == [], "T is num_steps (several: num_steps_grid), an optimiser's updates are iterations, the " \
                      f"granularity is granularity: {found}"


def test_the_exceptions_are_still_there():
  """An exception whose parameter is gone must leave the list (it only shrinks)."""
  present = {f"{q}.{p}" for q, _, s in CALLABLES for p in s.parameters}
  assert set(EXCEPTIONS) <= present, set(EXCEPTIONS) - present


def test_the_optimisers_take_iterations_and_return_a_report():
  for fn in (jaxsnn.tune_snn, jaxsnn.finetune, jaxsnn.descend_thresholds, jaxsnn.quantize_for_conversion):
    assert "iterations" in inspect.signature(fn).parameters, fn.__name__
  for recipe, names in ((jaxsnn.recipes.low_latency, {"tune_iterations"}),
                        (jaxsnn.recipes.low_latency_stages, {"tune_iterations"}),
                        (jaxsnn.recipes.few_steps, {"iterations", "finetune_iterations", "iteration_batches"})):
    assert names <= set(inspect.signature(recipe).parameters), recipe.__name__
  rng = np.random.default_rng(0)
  acts = {"s": np.maximum(rng.normal(size=(16, 3)), 0).astype(np.float32)}
  thresholds, report = jaxsnn.descend_thresholds(acts, {"s": acts["s"].max(0)}, 4, iterations=3)
  assert isinstance(report, jaxsnn.Report) and report.chose["iterations"] == 3
  assert report.details["losses"].shape == (4,) and set(thresholds) == {"s"}


def test_every_granularity_has_one_set_of_values_and_one_default():
  takes = {q: s.parameters["granularity"] for q, obj, s in CALLABLES
           if inspect.isfunction(obj) and "granularity" in s.parameters}
  assert {"jaxsnn.thresholds", "jaxsnn.ratio_histograms", "jaxsnn.thresholds_for_steps", "jaxsnn.calibrate_snn",
          "jaxsnn.descend_thresholds", "jaxsnn.quantize_for_conversion", "jaxsnn.recipes.paper"} <= set(takes)
  assert checks.GRANULARITIES == ("neuron", "channel", "layer") and checks.DEFAULT_GRANULARITY == "neuron"
  # The default is "neuron" wherever there is one; thresholds_for_steps (channel histograms) asks for the choice.
  defaults = {q: p.default for q, p in takes.items()}
  assert {q for q, d in defaults.items() if d is inspect.Parameter.empty} == {
      "jaxsnn.thresholds_for_steps", "jaxsnn.lowlatency.thresholds_for_steps"}
  assert {d for d in defaults.values() if d is not inspect.Parameter.empty} == {"neuron"}
  grid = inspect.signature(jaxsnn.analysis.information_loss_surface).parameters
  assert "granularities" in grid and set(grid["granularities"].default) <= set(checks.GRANULARITIES)


@pytest.mark.parametrize("call", [
    lambda: jaxsnn.thresholds(jaxsnn.Stats(max={"s": np.ones(3)}, num_samples=1), "site"),
    lambda: jaxsnn.descend_thresholds({"s": np.ones((2, 3))}, {"s": np.ones(3)}, 4, granularity="site"),
    lambda: jaxsnn.analysis.information_loss_surface(np.ones((2, 3)), np.ones(3), [1.0], [4], granularities=("site",)),
    lambda: jaxsnn.quantize_for_conversion(lambda v, x: x, None, [np.ones((2, 3))], levels=2, iterations=0,
                                           granularity="site"),
], ids=["thresholds", "descend_thresholds", "information_loss_surface", "quantize_for_conversion"])
def test_an_unknown_granularity_is_refused_in_one_wording(call):
  with pytest.raises(ValueError, match=r"^jaxsnn\.\w+: granularity must be one of \('neuron', 'channel', 'layer'\); "
                                       r"got 'site'"):
    call()


def test_data_stream_options_are_keyword_only():
  positional = [f"{q}({p.name}=)" for q, obj, s in CALLABLES if inspect.isfunction(obj)
                for p in s.parameters.values() if p.name in STREAM_OPTIONS and p.kind != p.KEYWORD_ONLY]
  assert positional == []


def script_flags():
  """``(script, [flag spellings])`` of every add_argument call in experiments/ and benchmarks/."""
  out = []
  for path in sorted([*ROOT.glob("experiments/*.py"), *ROOT.glob("benchmarks/*.py")]):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
        flags = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        if flags and flags[0].startswith("--"):
          out.append((path.relative_to(ROOT).as_posix(), flags))
  return out


def test_script_flags_say_num_steps_for_t_and_iterations_for_updates():
  """The first spelling of a flag is its name; an old spelling may follow as an alias (recorded commands use it)."""
  flags = script_flags()
  assert any(f[0] == "--num_steps" for _, f in flags) and any(f[0] == "--iterations" for _, f in flags)
  bad = [(script, f[0]) for script, f in flags if re.search(r"(^--|_)steps$", f[0]) and not f[0].endswith("num_steps")]
  assert bad == []


def test_the_renamed_public_names_are_gone():
  """No thin aliases are left: the old spellings fail instead of working under two names."""
  assert not hasattr(jaxsnn.recipes, "qcfs") and "qcfs" not in jaxsnn.recipes.__all__
  with pytest.raises(TypeError):
    jaxsnn.recipes.paper(None, None, [], norm="layer")
  assert not hasattr(jaxsnn.simulate, "__wrapped__") and not hasattr(jaxsnn.recipes.paper, "__wrapped__")
