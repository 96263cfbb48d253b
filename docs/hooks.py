"""MkDocs hooks of the jaxsnn site: what the site shows that is not written in docs/src.

* the walkthrough notebook, rendered by mkdocs-jupyter without executing it: the committed
  ``experiments/notebooks/walkthrough.ipynb`` with the outputs committed in it (written by ``bash
  scripts/notebook.sh``). A notebook whose outputs are missing, stale (its code cells changed after they were made:
  the fingerprint in its metadata differs) or incomplete fails the build (``docs/notebook_outputs.py``:
  ``problems``), so the site never shows a notebook without its outputs;
* the results files, at their repository paths (``experiments/RESULTS.md``, ``experiments/results/**``,
  ``experiments/figures/*``, ``benchmarks/RESULTS.md``, ``benchmarks/results/*``), copied at build time, never
  committed twice, so the guides link to them as ``../experiments/results/main.json``;
* KaTeX, the math renderer, served from the site itself (no CDN: the site works offline): ``npm pack`` of a
  pinned version, checked against its published SHA-512, unpacked once into ``docs/_vendor`` (git-ignored).

Every page is offline: the notebook template's MathJax script from a CDN is dropped (KaTeX renders the
notebook's math too).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import pathlib
import re
import shutil
import subprocess
import tarfile
import tempfile

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

import notebook_outputs  # docs/notebook_outputs.py (mkdocs puts this folder on sys.path while it loads hooks)

log = logging.getLogger("mkdocs.hooks.jaxsnn")

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
NOTEBOOK = notebook_outputs.WALKTHROUGH
NOTEBOOK_URI = "notebooks/walkthrough.ipynb"

KATEX_VERSION = "0.16.22"
KATEX_SHA512 = "XCHRdUw4lf3SKBaJe4EvgqIuWwkPSo9XoeO8GjQW94Bp7TWv9hNhzZjZ+OH9yf1UmLygb7DIT5GSFQiyt16zYg=="
KATEX = DOCS / "_vendor" / f"katex-{KATEX_VERSION}"
KATEX_FILES = ("katex.min.js", "katex.min.css", "contrib/auto-render.min.js")

# Repository files the site shows at their own paths: (folder, suffixes, recursive).
RESULTS = (("experiments", (".md",), False), ("experiments/results", (".json", ".png"), True),
           ("experiments/figures", (".json", ".png"), False), ("benchmarks", (".md",), False),
           ("benchmarks/results", (".json", ".png"), True))


def vendor_katex() -> pathlib.Path:
  """KaTeX's files in docs/_vendor (fetched once with ``npm pack``; the npm registry is all it needs)."""
  if all((KATEX / f).is_file() for f in KATEX_FILES):
    return KATEX
  if shutil.which("npm") is None:
    raise RuntimeError("the docs build vendors KaTeX with npm (Node.js): install npm, or unpack "
                       f"katex-{KATEX_VERSION}.tgz's package/ folder into {KATEX}")
  with tempfile.TemporaryDirectory() as tmp:
    out = subprocess.run(["npm", "pack", f"katex@{KATEX_VERSION}", "--json", "--pack-destination", tmp],
                         check=True, capture_output=True, text=True, timeout=300)
    tgz = pathlib.Path(tmp) / json.loads(out.stdout)[0]["filename"]
    digest = base64.b64encode(hashlib.sha512(tgz.read_bytes()).digest()).decode()
    if digest != KATEX_SHA512:
      raise RuntimeError(f"katex-{KATEX_VERSION}.tgz: SHA-512 {digest}, expected {KATEX_SHA512}")
    staging = pathlib.Path(tmp) / "unpacked"
    with tarfile.open(tgz) as tar:
      tar.extractall(staging, filter="data")
    KATEX.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(KATEX, ignore_errors=True)
    shutil.move(str(staging / "package" / "dist"), KATEX)
  log.info("vendored KaTeX %s into %s", KATEX_VERSION, KATEX)
  return KATEX


def check_notebook(path: pathlib.Path, strict: bool) -> None:
  """Fails the build (a warning when not strict: ``mkdocs serve --no-strict`` while editing the notebook) if the
  notebook's committed outputs are not its code cells' complete run."""
  try:
    found = notebook_outputs.problems(json.loads(path.read_text()))
  except (OSError, ValueError, KeyError) as e:
    found = [f"unreadable ({type(e).__name__}: {e})"]
  if found:
    message = (f"{path.relative_to(ROOT)}: its committed outputs cannot be shown: " + "; ".join(found) +
               ". Run bash scripts/notebook.sh (executes it and writes its outputs into it), then commit it.")
    if strict:
      raise PluginError(message)
    log.warning(message)


def _add(files: Files, config, uri: str, path: pathlib.Path) -> None:
  if files.get_file_from_path(uri) is None:
    files.append(File.generated(config, uri, abs_src_path=str(path)))


@event_priority(100)  # before mkdocs-jupyter's on_files, so that it converts the notebook added here
def on_files(files: Files, config) -> Files:
  # A real file under a source folder, not File.generated: mkdocs-jupyter's wrapper reads the path from src_dir.
  check_notebook(NOTEBOOK, strict=config["strict"])
  staged = DOCS / "_vendor" / "pages"
  (staged / NOTEBOOK_URI).parent.mkdir(parents=True, exist_ok=True)
  shutil.copyfile(NOTEBOOK, staged / NOTEBOOK_URI)
  if files.get_file_from_path(NOTEBOOK_URI) is None:
    files.append(File(NOTEBOOK_URI, str(staged), config["site_dir"], config["use_directory_urls"]))
  for folder, suffixes, recursive in RESULTS:
    base = ROOT / folder
    for path in sorted(base.rglob("*") if recursive else base.glob("*")):
      if path.is_file() and path.suffix in suffixes:
        _add(files, config, path.relative_to(ROOT).as_posix(), path)
  katex = vendor_katex()
  for path in sorted(katex.rglob("*")):
    if path.is_file() and (path.suffix in (".js", ".css", ".woff2")):
      _add(files, config, f"assets/katex/{path.relative_to(katex).as_posix()}", path)
  return files


_CDN_SCRIPT = re.compile(r'<script[^>]*\bsrc="https?://[^"]*"[^>]*>\s*</script>')


def on_page_content(html: str, page, config, files) -> str:
  # The notebook template loads MathJax from a CDN: dropped (KaTeX renders the math, offline).
  return _CDN_SCRIPT.sub("", html)
