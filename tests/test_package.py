"""The package's shape: module boundaries, one version, one list of public modules whose every name is documented,
experiments and benchmarks as thin scripts over the library.

The boundaries are read from the source with ``ast`` (nothing is imported), in jaxsnn/, experiments/ and benchmarks/:

* jaxsnn never imports experiments or benchmarks; benchmarks never import experiments; an experiment script imports
  no other script of experiments/ (only ``common`` and the configs);
* no module imports another module's private names (``from jaxsnn._src.x import _y``, ``import jaxsnn._src.x as
  _x``, ``from m import y as _y`` all count), nor reads them as attributes (``x._y`` for an imported module ``x``);
  ``_src`` is the package's layout, not a private name; dunders are not private;
* nothing imports JAX's internals (``jax._src``); ``jax.extend.core`` only from the modules that interpret jaxprs;
* a script (experiments/, benchmarks/) uses jaxsnn's public modules only: it never imports or reads ``jaxsnn._src``.

Each rule is checked once against a small tree of files made to break it (``test_the_checks_see_...``), so that a
rule that stops seeing its violation fails too.
"""

from __future__ import annotations

import ast
import configparser
import dataclasses
import importlib
import inspect
import pathlib
import re
import sys

import jaxsnn
from conftest import ROOT
from jaxsnn._src import public

TREES = ("jaxsnn", "experiments", "benchmarks")
SCRIPT_TREES = ("experiments", "benchmarks")  # run as scripts: their own folder is on sys.path
# What the recipes compose one by one: a script that calls one of these itself is a second copy of a recipe (build
# networks with jaxsnn.recipes). Checked below to be public and to be what jaxsnn/_src/recipes.py imports.
RECIPE_STAGES = ("calibrate_snn", "choose_readout_delay", "thresholds_for_steps", "tune_snn")
COMMON_LINE_BUDGET = 250  # issue 34: experiments/common.py holds paths, configs and method lists


# ---- reading the source ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Import:
  module: str  # absolute: the module a from-import reads from, or the module an import binds
  name: str | None  # the imported name of a from-import
  alias: str | None
  line: int


def is_private(name: str | None) -> bool:
  return bool(name) and name.startswith("_") and not (name.startswith("__") and name.endswith("__")) \
      and name != "_src"


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
  parts = path.relative_to(root).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: pathlib.Path, root: pathlib.Path = ROOT) -> list[Import]:
  """Every import of a file, relative imports made absolute."""
  out = []
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.ImportFrom):
      module = node.module or ""
      if node.level:
        package = module_name(path, root).split(".")
        package = package[:len(package) - node.level + (path.name == "__init__.py")]
        module = ".".join(package + ([module] if module else []))
      out += [Import(module, a.name, a.asname, node.lineno) for a in node.names]
    elif isinstance(node, ast.Import):
      out += [Import(a.name, None, a.asname, node.lineno) for a in node.names]
  return out


def tree_of(module: str, importer: pathlib.Path, root: pathlib.Path) -> str | None:
  """Which of jaxsnn/, experiments/, benchmarks/ a module is in (None: elsewhere). A bare name is a script of the
  importer's own folder first (scripts run with it on sys.path), then of the other script folder."""
  top = module.split(".")[0]
  if top in TREES:
    return top
  own = importer.relative_to(root).parts[0]
  for tree in sorted(SCRIPT_TREES, key=lambda t: t != own):
    if (root / tree / f"{top}.py").is_file():
      return tree
  return None


def is_module(dotted: str, importer: pathlib.Path, root: pathlib.Path) -> bool:
  tree = tree_of(dotted, importer, root)
  if tree is None:
    return False
  parts = dotted.split(".")
  base = root if parts[0] in TREES else root / tree
  return (base.joinpath(*parts).with_suffix(".py")).is_file() or (base.joinpath(*parts) / "__init__.py").is_file()


def module_bindings(path: pathlib.Path, root: pathlib.Path) -> dict[str, str]:
  """``{local name: module}`` for the names a file binds to modules of the three trees (and to jax)."""
  bound = {}
  for imp in imports(path, root):
    if imp.name is None:
      local = imp.alias or imp.module.split(".")[0]
      target = imp.module if imp.alias else imp.module.split(".")[0]
      if tree_of(target, path, root) or target == "jax":
        bound[local] = target
    elif is_module(f"{imp.module}.{imp.name}", path, root):
      bound[imp.alias or imp.name] = f"{imp.module}.{imp.name}"
  return bound


def sources(root: pathlib.Path) -> list[pathlib.Path]:
  """The project's Python files in TREES; hidden folders left out (benchmarks/.venv-peers is SpikingJelly's venv)."""
  return sorted(p for tree in TREES for p in (root / tree).rglob("*.py")
                if not any(part.startswith(".") for part in p.relative_to(root).parts))


# ---- the checks ------------------------------------------------------------------------------------------------
def boundary_offenders(root: pathlib.Path = ROOT) -> list[str]:
  """Every import that crosses a boundary of the module docstring, as ``path:line: what``."""
  offenders = []
  for path in sources(root):
    where = path.relative_to(root)
    own = where.parts[0]
    for imp in imports(path, root):
      said = f"from {imp.module} import {imp.name}" if imp.name else f"import {imp.module}"
      said += f" as {imp.alias}" if imp.alias else ""
      tree = tree_of(imp.module, path, root)
      if imp.module == "jax._src" or imp.module.startswith("jax._src."):
        offenders.append(f"{where}:{imp.line}: {said} (JAX internals)")
      if own == "jaxsnn" and tree in SCRIPT_TREES:
        offenders.append(f"{where}:{imp.line}: {said} (jaxsnn imports {tree})")
      if own in SCRIPT_TREES and tree == "jaxsnn" and "_src" in imp.module.split(".") + [imp.name]:
        offenders.append(f"{where}:{imp.line}: {said} (a script imports jaxsnn._src)")
      if own == "benchmarks" and tree == "experiments":
        offenders.append(f"{where}:{imp.line}: {said} (benchmarks import experiments)")
      if own == "experiments" and tree == "experiments":
        target = imp.module if imp.name is None or not is_module(f"{imp.module}.{imp.name}", path, root) \
            else f"{imp.module}.{imp.name}"
        if target not in ("common", "experiments.common") and not target.startswith("experiments.configs"):
          offenders.append(f"{where}:{imp.line}: {said} (an experiment imports another script)")
      if tree and (any(is_private(p) for p in imp.module.split(".")) or is_private(imp.name)
                   or is_private(imp.alias)):
        offenders.append(f"{where}:{imp.line}: {said} (a private name)")
    for module, chain, line in attribute_reads(path, root):
      if module == "jax" and chain and chain[0] == "_src":
        offenders.append(f"{where}:{line}: jax.{'.'.join(chain)} (JAX internals)")
      elif own in SCRIPT_TREES and module.split(".")[0] == "jaxsnn" and "_src" in chain:
        offenders.append(f"{where}:{line}: {module}.{'.'.join(chain[:chain.index('_src') + 1])} (a script reads "
                         "jaxsnn._src)")
      elif module != "jax":
        first = next((a for a in chain if is_private(a)), None)
        if first:
          offenders.append(f"{where}:{line}: {module}.{'.'.join(chain[:chain.index(first) + 1])} (a private name)")
  return offenders


def attribute_reads(path: pathlib.Path, root: pathlib.Path) -> list[tuple[str, list[str], int]]:
  """``(module, [attribute, ...], line)`` for every ``m.a.b`` (the whole chain, once) and ``getattr(m, "a")`` on a
  module that the file imported."""
  bound = module_bindings(path, root)
  tree = ast.parse(path.read_text(), str(path))
  inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Attribute) and id(node) not in inner:
      chain, value = [], node
      while isinstance(value, ast.Attribute):
        chain.insert(0, value.attr)
        value = value.value
      if isinstance(value, ast.Name) and value.id in bound:
        out.append((bound[value.id], chain, node.lineno))
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
          and len(node.args) >= 2 and isinstance(node.args[0], ast.Name) and node.args[0].id in bound
          and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
      out.append((bound[node.args[0].id], [node.args[1].value], node.lineno))
  return out


def stage_calls(root: pathlib.Path = ROOT) -> list[str]:
  """Every reference of a script (experiments/, common.py included, and benchmarks/) to a recipe stage, however it
  is imported or aliased: ``from jaxsnn import tune_snn as t``, ``j.lowlatency.tune_snn``, ``getattr(jaxsnn,
  "tune_snn")``. Mentions in strings and comments are not references."""
  out = []
  for path in sources(root):
    where = path.relative_to(root)
    if where.parts[0] not in SCRIPT_TREES:
      continue
    for imp in imports(path, root):
      if tree_of(imp.module, path, root) == "jaxsnn" and imp.name in RECIPE_STAGES:
        out.append(f"{where}:{imp.line}: from {imp.module} import {imp.name}")
    for module, chain, line in attribute_reads(path, root):
      if module.split(".")[0] == "jaxsnn" and set(chain) & set(RECIPE_STAGES):
        out.append(f"{where}:{line}: {module}.{'.'.join(chain)}")
  return out


# ---- the package -----------------------------------------------------------------------------------------------
def test_import_boundaries_hold_in_jaxsnn_experiments_and_benchmarks():
  assert boundary_offenders() == []


def test_the_checks_see_every_kind_of_violation(tmp_path):
  files = {
      # jaxsnn: a private name imported (plain, aliased, relatively), read as an attribute, by getattr; the
      # experiments and the benchmarks imported; JAX internals.
      "jaxsnn/__init__.py": "",
      "jaxsnn/_src/__init__.py": "",
      "jaxsnn/lowlatency.py": "",
      "jaxsnn/_src/lowering.py": "def im2col(): pass\ndef _spec(): pass\n",
      "jaxsnn/_src/a.py": ("from jaxsnn._src.lowering import im2col as _im2col\n"
                           "from jaxsnn._src.lowering import _spec\n"
                           "from .lowering import _spec as spec\n"
                           "from jaxsnn._src import lowering\n"
                           "import jaxsnn._src.lowering as low\n"
                           "x = lowering._spec, low.im2col, getattr(low, '_spec'), lowering.__name__\n"
                           "from experiments import common\n"
                           "import common\n"
                           "import timing\n"
                           "from jax._src import core\n"
                           "import jax\n"
                           "y = jax._src.core\n"),
      # an experiment: another script imported; common and the configs are fine.
      "experiments/common.py": "import jaxsnn\n",
      "experiments/configs/__init__.py": "",
      "experiments/configs/c.py": "",
      "experiments/main.py": ("import common\nfrom experiments.configs import c\nimport main2\n"
                              "from experiments import main2 as m\nimport jaxsnn\n"
                              "snn = jaxsnn.tune_snn  # 'jaxsnn.calibrate_snn(' in a comment is no call\n"
                              "s = 'jaxsnn.choose_readout_delay('\n"),
      "experiments/main2.py": ("import jaxsnn as j\nfrom jaxsnn import lowlatency as ll\n"
                               "from jaxsnn.lowlatency import thresholds_for_steps as t\n"
                               "a = j.lowlatency.calibrate_snn, ll.tune_snn, getattr(j, 'choose_readout_delay')\n"
                               "b = j.recipes.low_latency, j.evaluate\n"),
      # a benchmark: the experiments imported, by package and by the sys.path name; its own helpers are fine.
      "benchmarks/timing.py": "",
      "benchmarks/b.py": ("import timing\nimport common\nfrom experiments.common import x\nfrom timing import _t\n"
                          "from jaxsnn._src import lowering\nimport jaxsnn._src.lowering as low\n"
                          "from jaxsnn._src.lowering import im2col\nimport jaxsnn\ny = jaxsnn._src.lowering.im2col\n"
                          "from jaxsnn import lowlatency\n"),
  }
  for name, text in files.items():
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text(text)
  assert sorted(boundary_offenders(tmp_path)) == sorted([
      "jaxsnn/_src/a.py:1: from jaxsnn._src.lowering import im2col as _im2col (a private name)",
      "jaxsnn/_src/a.py:2: from jaxsnn._src.lowering import _spec (a private name)",
      "jaxsnn/_src/a.py:3: from jaxsnn._src.lowering import _spec as spec (a private name)",
      "jaxsnn/_src/a.py:6: jaxsnn._src.lowering._spec (a private name)",
      "jaxsnn/_src/a.py:6: jaxsnn._src.lowering._spec (a private name)",
      "jaxsnn/_src/a.py:7: from experiments import common (jaxsnn imports experiments)",
      "jaxsnn/_src/a.py:8: import common (jaxsnn imports experiments)",
      "jaxsnn/_src/a.py:9: import timing (jaxsnn imports benchmarks)",
      "jaxsnn/_src/a.py:10: from jax._src import core (JAX internals)",
      "jaxsnn/_src/a.py:12: jax._src.core (JAX internals)",
      "experiments/main.py:3: import main2 (an experiment imports another script)",
      "experiments/main.py:4: from experiments import main2 as m (an experiment imports another script)",
      "benchmarks/b.py:2: import common (benchmarks import experiments)",
      "benchmarks/b.py:3: from experiments.common import x (benchmarks import experiments)",
      "benchmarks/b.py:4: from timing import _t (a private name)",
      "benchmarks/b.py:5: from jaxsnn._src import lowering (a script imports jaxsnn._src)",
      "benchmarks/b.py:6: import jaxsnn._src.lowering as low (a script imports jaxsnn._src)",
      "benchmarks/b.py:7: from jaxsnn._src.lowering import im2col (a script imports jaxsnn._src)",
      "benchmarks/b.py:9: jaxsnn._src (a script reads jaxsnn._src)",
  ])
  assert sorted(stage_calls(tmp_path)) == sorted([
      "experiments/main.py:6: jaxsnn.tune_snn",
      "experiments/main2.py:3: from jaxsnn.lowlatency import thresholds_for_steps",
      "experiments/main2.py:4: jaxsnn.lowlatency.calibrate_snn",
      "experiments/main2.py:4: jaxsnn.lowlatency.tune_snn",
      "experiments/main2.py:4: jaxsnn.choose_readout_delay",
  ])


def test_jax_internals_are_touched_by_the_jaxpr_modules_only():
  users = {path.name for path in (ROOT / "jaxsnn").rglob("*.py")
           for imp in imports(path) if imp.module.startswith("jax.extend.core")}
  assert users <= {"ir.py", "rules.py", "qcfs.py", "program_io.py"}


def test_scripts_build_networks_through_the_recipes_not_their_stages():
  """A script (experiments/common.py too) that calls a recipe's stages itself is a second copy of a recipe."""
  assert stage_calls() == []


def test_the_recipe_stages_are_what_the_recipes_compose():
  # The list of the check above cannot go stale: every stage is public and imported by the recipes' module.
  composed = {imp.name for imp in imports(ROOT / "jaxsnn/_src/recipes.py")}
  assert set(RECIPE_STAGES) <= composed and all(callable(getattr(jaxsnn, name)) for name in RECIPE_STAGES)


def test_experiments_common_stays_within_its_line_budget():
  """experiments/common.py holds paths, configs and method lists; logic belongs to the library (issue 34)."""
  lines = len((ROOT / "experiments/common.py").read_text().splitlines())
  assert lines <= COMMON_LINE_BUDGET, f"experiments/common.py has {lines} lines (budget {COMMON_LINE_BUDGET})"


def test_one_version():
  cfg = configparser.ConfigParser()
  cfg.read(ROOT / "setup.cfg")
  assert cfg["metadata"]["version"] == "attr: jaxsnn.__version__"
  assert re.fullmatch(r"\d+\.\d+\.\d+", jaxsnn.__version__)


def test_the_list_of_public_modules_is_every_public_module_and_each_has_an_api_page():
  modules = {"jaxsnn"} | {f"jaxsnn.{p.stem}" for p in (ROOT / "jaxsnn").glob("*.py") if not p.name.startswith("_")}
  assert sorted(public.MODULES) == sorted(modules) and len(set(public.MODULES)) == len(public.MODULES)
  pages = {p.stem for p in (ROOT / "docs/src/api").glob("*.md")}
  assert pages == {"jaxsnn" if m == "jaxsnn" else m.split(".", 1)[1] for m in public.MODULES}
  sys.path.insert(0, str(ROOT / "docs"))
  import griffe_roles  # the API pages read the same list
  assert griffe_roles.PUBLIC_MODULES is public.MODULES and griffe_roles.public_names is public.names


# Public functions of the training/data/model helpers written before the Args rule: documented, but without an Args
# section. The list only shrinks: a new function needs Args, and an entry that gets them must leave the list.
WITHOUT_ARGS = {
    "jaxsnn.models": ("avg_pool", "conv_im2col_grad", "get_model", "qcfs_activation", "scale_width"),
    "jaxsnn.data": ("cifar_augment", "flip_only", "imagenet_batches", "normalize", "num_batches", "random_crop",
                    "random_flip", "spec", "splits"),
    "jaxsnn.training": ("build_model", "checkpoint_files", "create_train_state", "learning_rate_schedule",
                        "load_config", "load_trained", "make_optimizer"),
}


def test_every_public_name_is_exported_and_documented():
  undocumented, without_args = [], []
  for name in public.MODULES:
    module = importlib.import_module(name)
    assert module.__doc__, name
    for attr in public.names(module):
      obj = getattr(module, attr)
      if inspect.isfunction(obj) or inspect.isclass(obj):
        if not (obj.__doc__ or "").strip():
          undocumented.append(f"{name}.{attr}")
        elif inspect.isfunction(obj) and "Args:" not in obj.__doc__ and inspect.signature(obj).parameters:
          without_args.append(f"{name}.{attr}")
  assert undocumented == []
  assert sorted(without_args) == sorted(f"{m}.{f}" for m, fs in WITHOUT_ARGS.items() for f in fs)


def test_the_leaking_protocol_is_in_its_own_namespace_only():
  assert not [n for n in dir(jaxsnn) if "authors" in n and n != "authors_protocol"]
  assert "LEAKS THE TEST SET" in jaxsnn.authors_protocol.__doc__
