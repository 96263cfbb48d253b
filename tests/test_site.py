"""The documentation site (docs/): built strictly, every guide's code runs, every public name has an API entry.

The build is ``mkdocs build --strict`` (what ``bash scripts/docs.sh`` runs): a broken link or cross-reference, a
docstring that does not render, any warning fails it. Every ```python block of docs/src/**/*.md runs here, in
order, page by page, in a namespace of small models and data that this file prepares for the page (what the page
says its snippets assume); a block preceded by ``<!-- docs-test: skip (why) -->`` is not run, and there are at
most ``MAX_SKIPPED`` of those. The walkthrough notebook is shown with the outputs committed in it (nothing another
test leaves behind), and a notebook without them, or with stale ones, fails the build.
"""

from __future__ import annotations

import html.parser
import importlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsnn

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted((DOCS / "src").rglob("*.md"))
BLOCK = re.compile(r"^(<!-- docs-test: skip \((?P<why>[^)]+)\) -->\n)?```python\n(?P<code>.*?)^```", re.S | re.M)
MAX_SKIPPED = 3
BUILD_TIMEOUT_S = 600

sys.path.insert(0, str(DOCS))
from griffe_roles import PUBLIC_MODULES, public_names  # noqa: E402  (docs/griffe_roles.py: one list of public names)


def blocks(page: pathlib.Path) -> list[tuple[str, str | None, int]]:
  """``(code, why it is skipped or None, line)`` of every python block of a page, in order."""
  text = page.read_text()
  return [(m["code"], m["why"], text.count("\n", 0, m.start("code")) + 1) for m in BLOCK.finditer(text)]


# ---- the build ---------------------------------------------------------------------------------------------------
def build(site_dir: pathlib.Path, docs: pathlib.Path = DOCS) -> subprocess.CompletedProcess:
  env = dict(os.environ, NO_MKDOCS_2_WARNING="1")  # Material's banner about MkDocs 2.0: not a warning of the build
  return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(docs / "mkdocs.yml"),
                         "-d", str(site_dir)], cwd=docs.parent, env=env, capture_output=True, text=True,
                        timeout=BUILD_TIMEOUT_S)


def mirror(root: pathlib.Path) -> pathlib.Path:
  """A copy of docs/ beside links to the rest of the repository: the build stages files into docs/_vendor (the
  notebook it renders; KaTeX, fetched when missing), and no test writes into the repository. The repository's KaTeX,
  if fetched already, is copied with docs/."""
  shutil.copytree(DOCS, root / "docs", ignore=shutil.ignore_patterns("_site", "pages", "__pycache__"))
  for entry in ROOT.iterdir():
    if entry.name not in ("docs", ".git", ".venv"):
      (root / entry.name).symlink_to(entry)
  return root / "docs"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> pathlib.Path:
  site_dir = tmp_path_factory.mktemp("site")
  done = build(site_dir, mirror(tmp_path_factory.mktemp("repository")))
  assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout[-5000:]}\n{done.stderr[-5000:]}"
  return site_dir


class _Ids(html.parser.HTMLParser):
  def __init__(self):
    super().__init__()
    self.ids, self.external = set(), []

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if "id" in attrs:
      self.ids.add(attrs["id"])
    url = attrs.get("src") if tag in ("script", "img") else attrs.get("href") if tag == "link" else None
    if url and re.match(r"(https?:)?//", url):
      self.external.append(f"<{tag}> {url}")


def parse(path: pathlib.Path) -> _Ids:
  parser = _Ids()
  parser.feed(path.read_text())
  return parser


def api_page(module: str) -> str:
  return "jaxsnn" if module == "jaxsnn" else module.split(".", 1)[1]


def test_every_public_name_has_an_api_entry(site):
  missing = []
  for module in PUBLIC_MODULES:
    ids = parse(site / "api" / api_page(module) / "index.html").ids
    if module not in ids:
      missing.append(module)
    for name in public_names(importlib.import_module(module)):
      entry = f"{module}.{name}"
      if isinstance(getattr(importlib.import_module(module), name), type(jaxsnn)):
        # A module exported by jaxsnn (jaxsnn.recipes, ...): its entry is its own page.
        entry = getattr(importlib.import_module(module), name).__name__
        if entry not in parse(site / "api" / api_page(entry) / "index.html").ids:
          missing.append(entry)
      elif entry not in ids:
        missing.append(entry)
  assert missing == []


def test_the_api_check_sees_a_missing_entry(site, tmp_path):
  page = tmp_path / "index.html"
  page.write_text((site / "api" / "neurons" / "index.html").read_text().replace('id="jaxsnn.neurons.SNM"', ""))
  assert "jaxsnn.neurons.SNM" not in parse(page).ids and "jaxsnn.neurons.IF" in parse(page).ids


def test_every_public_name_is_documented():
  """Every public name has a docstring as the API pages read it (statically, with the docs' griffe extension)."""
  import griffe
  from griffe_roles import Roles
  package = griffe.load("jaxsnn", search_paths=[str(ROOT)], resolve_aliases=True,
                        extensions=griffe.load_extensions(Roles()))
  undocumented = []
  for module in PUBLIC_MODULES:
    node = package if module == "jaxsnn" else package[module.split(".", 1)[1]]
    for name in public_names(importlib.import_module(module)):
      if not (node[name].docstring and node[name].docstring.value.strip()):
        undocumented.append(f"{module}.{name}")
  assert undocumented == []


def test_pages_are_offline_and_show_their_figures(site):
  external, broken = [], []
  for page in site.rglob("*.html"):
    parsed = parse(page)
    external += [f"{page.relative_to(site)}: {u}" for u in parsed.external]
  for img in re.findall(r'<img[^>]*src="([^"]+)"', (site / "index.html").read_text()):
    if not (site / img).is_file():
      broken.append(img)
  assert external == [] and broken == []
  assert (site / "assets" / "katex" / "katex.min.js").is_file()
  assert 'class="arithmatex"' in (site / "guides" / "paper" / "index.html").read_text()


def test_the_notebook_is_rendered_with_its_committed_outputs(site):
  import notebook_outputs
  page = (site / "notebooks" / "walkthrough" / "index.html").read_text()
  assert "jaxsnn walkthrough" in page
  nb = json.loads(notebook_outputs.WALKTHROUGH.read_text())
  figures = sum("image/png" in o.get("data", {}) for c in notebook_outputs.code_cells(nb) for o in c["outputs"])
  assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', page)) == figures >= 6  # (the CSS has two more)
  assert "NOTEBOOK_SUMMARY {" in page  # the last cell's printed output


@pytest.mark.parametrize("change, says", [("cleared", "no outputs"), ("edited", "the outputs are stale")])
def test_the_build_fails_on_a_notebook_without_outputs_or_with_stale_ones(change, says, tmp_path):
  # The real build, of a copy of docs/ beside a changed notebook (the hook checks it before any page is rendered).
  shutil.copytree(DOCS, tmp_path / "docs", ignore=shutil.ignore_patterns("_site", "_vendor", "__pycache__"))
  import notebook_outputs
  nb = json.loads(notebook_outputs.WALKTHROUGH.read_text())
  assert notebook_outputs.problems(nb) == []
  code = notebook_outputs.code_cells(nb)
  if change == "cleared":  # Jupyter's "Clear All Outputs"
    for c in code:
      c["outputs"], c["execution_count"] = [], None
  else:  # a code cell changed after the run, its old output kept
    code[1]["source"] = ["T_MAX = 64\n"]
  folder = tmp_path / notebook_outputs.WALKTHROUGH.relative_to(ROOT).parent
  folder.mkdir(parents=True)
  (folder / notebook_outputs.WALKTHROUGH.name).write_text(json.dumps(nb))
  done = build(tmp_path / "site", tmp_path / "docs")
  assert done.returncode != 0
  assert "walkthrough.ipynb: its committed outputs cannot be shown" in done.stderr and says in done.stderr, \
      done.stderr[-3000:]
  assert "bash scripts/notebook.sh" in done.stderr


def test_the_main_job_table_is_its_result_file():
  result = json.loads((ROOT / "experiments/results/main.json").read_text())
  section = (DOCS / "src/index.md").read_text().split("## Results of the main job", 1)[1].split("\n## ", 1)[0]
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


# ---- every guide's code ------------------------------------------------------------------------------------------
class TinyCNN(nn.Module):
  """conv4 3x3 - BatchNorm - ReLU - avg pool - Dense(3), on 6x6x1 inputs: small enough to compile in seconds."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x)))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


def tiny():
  """A small CNN, its variables, 24 images and the ANN's own answers as labels."""
  model = TinyCNN()
  x = jax.random.normal(jax.random.PRNGKey(0), (24, 6, 6, 1))
  variables = model.init(jax.random.PRNGKey(1), x)
  apply_fn = lambda v, x: model.apply(v, x, train=False)  # noqa: E731
  y = np.asarray(apply_fn(variables, x).argmax(-1), np.int32)
  return model, variables, apply_fn, x, y


def base():
  return {"jax": jax, "jnp": jnp, "np": np, "jaxsnn": jaxsnn}


def tiny_namespace():
  model, variables, apply_fn, x, y = tiny()
  return {**base(), "model": model, "variables": variables, "apply_fn": apply_fn,
          "x_train": x[:12], "y_train": y[:12], "x_test": x[12:], "y_test": y[12:], "x": x, "y": y,
          "train_batches": [(x[:12], y[:12])], "test_batches": [(x[12:], y[12:])]}


def converted_namespace():
  ns = tiny_namespace()
  x, y = ns["x"][:12], ns["y"][:12]
  snn, _ = jaxsnn.recipes.paper(ns["apply_fn"], ns["variables"], [x])
  return {**ns, "snn": snn, "x": x, "y": y}


def dense_namespace():
  x = jax.random.normal(jax.random.PRNGKey(0), (32, 4))
  return {**base(), "x": x, "train_batches": [x[:16], x[16:]]}


def mnist_like_namespace():
  x = jax.random.normal(jax.random.PRNGKey(0), (16, 28, 28, 1))
  y = jnp.arange(16) % 10
  return {**base(), "x": x, "y": y, "train_batches": [(x, y)]}


def differentiable_namespace():
  ns = tiny_namespace()
  snn, _ = jaxsnn.recipes.low_latency(ns["apply_fn"], ns["variables"], [ns["x"]], 8)
  x, y = ns["x"], ns["y"]
  return {**ns, "snn": snn, "x": x[:12], "train_batches": [(x[:12], y[:12])] * 20,
          "val_batches": [(x[12:], y[12:])]}


def models_namespace():
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 28, 28, 1))
  images = np.asarray(np.random.default_rng(0).integers(0, 256, (40, 28, 28, 1)), np.uint8)
  labels = np.arange(40, dtype=np.int32) % 10
  return {**base(), "x": x, "images": images, "labels": labels}


# Page (relative to docs/src) -> (namespace, working directory: "tmp", or "root": a fresh directory in which
# experiments/ is the repository's, as if run from the repository root).
NAMESPACES = {
    "index.md": (tiny_namespace, "tmp"),
    "guides/converting.md": (dense_namespace, "tmp"),
    "guides/paper.md": (tiny_namespace, "tmp"),
    "guides/low-latency.md": (tiny_namespace, "tmp"),
    "guides/qcfs.md": (mnist_like_namespace, "tmp"),
    "guides/step.md": (converted_namespace, "tmp"),
    "guides/saving.md": (converted_namespace, "tmp"),
    "guides/differentiable.md": (differentiable_namespace, "tmp"),
    "guides/analysis.md": (converted_namespace, "tmp"),
    "guides/batch-jobs.md": (converted_namespace, "tmp"),
    "guides/models-data-training.md": (models_namespace, "root"),
    "guides/performance.md": (converted_namespace, "tmp"),
    "guides/extending.md": (dense_namespace, "tmp"),
}
PAGES_WITH_CODE = [p for p in PAGES if any(why is None for _, why, _ in blocks(p))]


def test_every_page_with_code_has_a_namespace():
  assert sorted(str(p.relative_to(DOCS / "src")) for p in PAGES_WITH_CODE) == sorted(NAMESPACES)


def test_skipped_blocks_are_few_and_say_why():
  skipped = [(p.name, line, why) for p in PAGES for _, why, line in blocks(p) if why is not None]
  assert len(skipped) <= MAX_SKIPPED, skipped
  assert all(len(why.split()) >= 2 for _, _, why in skipped), skipped


def test_the_block_reader_sees_a_skip_marker(tmp_path):
  page = tmp_path / "page.md"
  page.write_text("a\n\n```python\nx = 1\n```\n\n<!-- docs-test: skip (needs a GPU) -->\n```python\ny = 2\n```\n")
  assert blocks(page) == [("x = 1\n", None, 4), ("y = 2\n", "needs a GPU", 9)]


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=lambda p: str(p.relative_to(DOCS / "src")))
def test_every_python_block_of_the_page_runs(page, tmp_path, monkeypatch):
  make, cwd = NAMESPACES[str(page.relative_to(DOCS / "src"))]
  if cwd == "root":
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
  monkeypatch.chdir(tmp_path)
  ns = make()
  for code, why, line in blocks(page):
    if why is None:
      # Compiled with the page's name and line, so that a failure points at the block in the guide.
      exec(compile("\n" * (line - 1) + code, str(page), "exec"), ns)  # noqa: S102
