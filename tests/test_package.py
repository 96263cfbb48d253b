"""The package's shape: module boundaries, one version, a public API whose every name is documented, experiments and
benchmarks as thin scripts over the library."""

import ast
import configparser
import inspect
import re

import jaxsnn
from conftest import ROOT

PUBLIC_MODULES = ("jaxsnn", "jaxsnn.analysis", "jaxsnn.recipes", "jaxsnn.lowlatency", "jaxsnn.neurons",
                  "jaxsnn.surrogates", "jaxsnn.authors_protocol", "jaxsnn.files", "jaxsnn.xla")


def imports(path):
  """(module, name, alias) of every import in a file."""
  out = []
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module:
      out += [(node.module, a.name, a.asname) for a in node.names]
    elif isinstance(node, ast.Import):
      out += [(a.name, None, a.asname) for a in node.names]
  return out


def test_no_module_imports_private_names_aliased_or_not_nor_jax_internals():
  offenders = []
  for path in sorted((ROOT / "jaxsnn").rglob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py")):
    for module, name, alias in imports(path):
      if module.startswith("jax._src"):
        offenders.append(f"{path.name}: {module}")
      if module.startswith("jaxsnn") and ((name or "").startswith("_") or (alias or "").startswith("_")):
        offenders.append(f"{path.name}: from {module} import {name} as {alias}")
  assert offenders == []


def test_the_boundary_check_sees_an_aliased_private_import(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("from jaxsnn._src.lowering import im2col as _im2col\nfrom jaxsnn._src.ir import _spec\n")
  found = [(m, n, a) for m, n, a in imports(bad) if (n or "").startswith("_") or (a or "").startswith("_")]
  assert len(found) == 2


def test_jax_internals_are_touched_by_one_module_only():
  users = {path.name for path in (ROOT / "jaxsnn").rglob("*.py")
           for module, _, _ in imports(path) if module.startswith("jax.extend.core")}
  assert users <= {"ir.py", "rules.py", "qcfs.py"}


def test_experiments_and_benchmarks_are_thin_scripts():
  scripts = {p.stem for p in (ROOT / "experiments").glob("*.py")} - {"__init__", "common"}
  for path in (ROOT / "experiments").glob("*.py"):
    names = {part for module, name, _ in imports(path) for part in [module.split(".")[-1], name] if part}
    assert not names & scripts, (path.name, names & scripts)
  for path in (ROOT / "benchmarks").glob("*.py"):
    assert not [m for m, _, _ in imports(path) if m.startswith("experiments") or m == "common"], path.name
  # No second copy of a recipe: the scripts build networks through jaxsnn.recipes, not the tools one by one.
  for path in list((ROOT / "experiments").glob("*.py")) + list((ROOT / "benchmarks").glob("*.py")):
    text = path.read_text()
    for tool in ("calibrate_snn(", "choose_readout_delay(", "thresholds_for_steps(", "tune_snn("):
      assert tool not in text, f"{path.name} calls {tool} itself: build networks with jaxsnn.recipes"
  # The library never imports the experiments.
  for path in (ROOT / "jaxsnn").rglob("*.py"):
    assert not [m for m, _, _ in imports(path) if m.startswith("experiments")], path.name


def test_one_version():
  cfg = configparser.ConfigParser()
  cfg.read(ROOT / "setup.cfg")
  assert cfg["metadata"]["version"] == "attr: jaxsnn.__version__"
  assert re.fullmatch(r"\d+\.\d+\.\d+", jaxsnn.__version__)


def test_every_public_name_is_exported_and_documented():
  import importlib
  undocumented = []
  for name in PUBLIC_MODULES:
    module = importlib.import_module(name)
    assert module.__doc__, name
    for attr in module.__all__:
      obj = getattr(module, attr)
      if inspect.isfunction(obj) or inspect.isclass(obj):
        if not (obj.__doc__ or "").strip():
          undocumented.append(f"{name}.{attr}")
        if inspect.isfunction(obj) and "Args:" not in obj.__doc__ and inspect.signature(obj).parameters:
          undocumented.append(f"{name}.{attr} (no Args)")
  assert undocumented == []


def test_register_rule_is_public_and_documented_with_an_example():
  assert jaxsnn.register_rule.__doc__ and "Example" in jaxsnn.register_rule.__doc__
  assert jaxsnn.Rule.__doc__


def test_the_leaking_protocol_is_in_its_own_namespace_only():
  assert not [n for n in dir(jaxsnn) if "authors" in n and n != "authors_protocol"]
  assert "LEAKS THE TEST SET" in jaxsnn.authors_protocol.__doc__
