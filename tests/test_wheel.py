"""The package that installs: ``python -m build`` makes an sdist and a wheel (the wheel built from the sdist, as pip
would build it), the wheel installs into a clean virtual environment, and the README's quick start runs from there.

The venv has no system site-packages: jax, flax, optax and numpy come from the wheel's own ``Requires-Dist``, resolved
by pip as a user's ``pip install`` would (the project's pip configuration and pip's cache, which ``scripts/env.sh``
has already filled on a fresh CI machine), so a file or a dependency missing from the wheel fails here. The quick
start runs from a folder outside the repository with ``python -I`` (no PYTHONPATH, no user site, no script folder on
``sys.path``), and checks that ``jaxsnn`` was imported from the venv, not from the source tree.

Measured on 2 shared CPU cores, dependencies from local package indexes: build ~7 s, venv + install ~30 s (mostly
unpacking jaxlib), quick start ~10 s; ~55 s in all. With an empty pip cache and no local index, the install downloads
about 170 MB from PyPI (jaxlib 85 MB, scipy 35, tensorstore 22, numpy 17, ...).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import venv
import zipfile

import pytest

import jaxsnn
from conftest import ROOT

DIST_NAME = "jaxsnn-convert"  # setup.cfg [metadata] name; "jaxsnn" on PyPI is another project

pytestmark = pytest.mark.slow

# What the README's quick start expects to exist: a trained ReLU network and its data (here a tiny random Flax CNN,
# labelled by its own predictions). The check afterwards is printed as JSON for the test to read.
PREAMBLE = """
import flax.linen as nn
import jax
import numpy as np

class TinyCNN(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x)))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    return nn.Dense(3)(x.reshape(x.shape[0], -1))

model = TinyCNN()
x = jax.random.normal(jax.random.PRNGKey(0), (12, 6, 6, 1))
variables = model.init(jax.random.PRNGKey(1), x)
y = np.asarray(model.apply(variables, x).argmax(-1), np.int32)
x_train, y_train, x_test, y_test = x[:6], y[:6], x[6:], y[6:]
"""

REPORT = """
import importlib.metadata, json, pathlib
import jaxsnn
print("RESULT " + json.dumps({
    "file": jaxsnn.__file__,
    "version": jaxsnn.__version__,
    "dist_version": importlib.metadata.version(DIST_NAME),
    "py_typed": (pathlib.Path(jaxsnn.__file__).parent / "py.typed").is_file(),
    "trace_shape": list(trace.outputs.shape),
    "acc": [float(a) for a in acc],
}))
""".replace("DIST_NAME", repr(DIST_NAME))


def quick_start() -> str:
  """The README's quick start block, as written."""
  section = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
  return re.findall(r"```python\n(.*?)```", section, re.S)[0]


def source_files() -> set[str]:
  """Every file of the package's source tree (what the wheel must hold), as wheel paths."""
  return {p.relative_to(ROOT).as_posix() for p in (ROOT / "jaxsnn").rglob("*")
          if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
  done = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
  assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
  return done


def source_copy(dest: pathlib.Path) -> pathlib.Path:
  """The repository's files (tracked, and new ones not ignored) copied to ``dest``: setuptools writes its
  ``*.egg-info`` into the tree it builds, and no test writes into the repository."""
  listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT).stdout
  for name in filter(None, listed.split("\0")):
    if (ROOT / name).is_file():
      (dest / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(ROOT / name, dest / name)
  return dest


def test_the_built_wheel_installs_in_a_clean_venv_and_runs_the_quick_start(tmp_path):
  dist = tmp_path / "dist"
  run([sys.executable, "-m", "build", "--outdir", str(dist), str(source_copy(tmp_path / "src"))])
  (wheel,) = dist.glob("*.whl")
  (sdist,) = dist.glob("*.tar.gz")
  stem = f"{DIST_NAME.replace('-', '_')}-{jaxsnn.__version__}"
  assert wheel.name == f"{stem}-py3-none-any.whl" and sdist.name == f"{stem}.tar.gz"

  # The wheel holds the whole package (every module, py.typed, any data file) and nothing of the repository else.
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    metadata = z.read(f"{stem}.dist-info/METADATA").decode()
  assert {n for n in names if not n.startswith(f"{stem}.dist-info/")} == source_files()
  assert "jaxsnn/py.typed" in names and f"{stem}.dist-info/licenses/LICENSE" in names
  for line in (f"Name: {DIST_NAME}", "License-Expression: Apache-2.0", "Classifier: Typing :: Typed",
               "Description-Content-Type: text/markdown", "Requires-Dist: jax>=", "Requires-Dist: flax>="):
    assert line in metadata, line
  assert "## Quick start" in metadata  # long_description is the README
  with tarfile.open(sdist) as t:
    members = {m.name.split("/", 1)[1] for m in t.getmembers() if "/" in m.name}
  assert {"LICENSE", "README.md", "jaxsnn/py.typed", "docs/src/index.md"} <= members
  assert not any(m.startswith(("experiments/", "benchmarks/", "tests/")) for m in members)

  # A clean venv (no system site-packages, no pip of its own: the running pip installs into it with --python).
  env_dir = tmp_path / "venv"
  venv.EnvBuilder(with_pip=False, system_site_packages=False).create(env_dir)
  python = env_dir / "bin" / "python"
  run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", str(wheel)])

  workdir = tmp_path / "run"  # outside the repository: the source tree cannot be imported from here
  workdir.mkdir()
  script = workdir / "quickstart.py"
  script.write_text(textwrap.dedent(PREAMBLE) + quick_start() + textwrap.dedent(REPORT))
  env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
  env["JAX_PLATFORMS"] = "cpu"
  done = run([str(python), "-I", str(script)], cwd=workdir, env=env)
  (line,) = [out for out in done.stdout.splitlines() if out.startswith("RESULT ")]
  result = json.loads(line.removeprefix("RESULT "))

  installed = pathlib.Path(result["file"]).resolve()
  assert installed.is_relative_to(env_dir.resolve()), installed
  assert not installed.is_relative_to(ROOT)
  assert result["version"] == result["dist_version"] == jaxsnn.__version__
  assert result["py_typed"]
  assert len(result["acc"]) == 256 and result["trace_shape"] == [256, 6, 3]
  assert all(0.0 <= a <= 1.0 for a in result["acc"])
  assert result["acc"][-1] >= 5 / 6  # the paper's SNN gives its ANN's answers after 256 steps (a near-tie may differ)
