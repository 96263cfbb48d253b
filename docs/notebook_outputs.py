"""The committed outputs of jaxsnn's notebooks: written by one command, checked by the docs build and the tests.

A notebook is committed executed (its outputs and figures in the ``.ipynb``), so that the docs site shows them from a
fresh clone without running it (the walkthrough takes minutes; the build stays fast and offline). The command that
writes it runs every code cell top to bottom in a fresh kernel of this interpreter, with the notebook's folder as the
working directory (as Jupyter does), stores a fingerprint of the code cells in the notebook's metadata and replaces
the file atomically::

    bash scripts/notebook.sh                              # the walkthrough
    python docs/notebook_outputs.py PATH.ipynb [...]      # any notebook (with .venv active)

:func:`problems` says why a notebook's outputs cannot be shown: no fingerprint (not written by this command), a
fingerprint that is not its code cells' (a code cell edited after the run: the outputs are stale), cells not all run
top to bottom in one kernel (execution counts other than 1, 2, ..., n: cleared, or run out of order), an error
output, no output at all. A code cell may have no output of its own (one that only assigns): its execution count
says that it ran. The numbers in the outputs differ slightly from CPU to CPU; nothing here compares them.

Nothing here imports jaxsnn; :func:`problems` needs only the standard library (the docs build calls it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
WALKTHROUGH = ROOT / "experiments" / "notebooks" / "walkthrough.ipynb"
KEY = "jaxsnn"  # the notebook metadata entry: {"code_fingerprint": "sha256:..."}
CELL_TIMEOUT_S = 900  # one cell; the walkthrough takes a few minutes on 2 CPU cores


def code_cells(nb: dict) -> list[dict]:
  return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _source(cell: dict) -> str:
  return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def fingerprint(nb: dict) -> str:
  """SHA-256 of the code cells' sources, in order (markdown cells and outputs do not enter it)."""
  return "sha256:" + hashlib.sha256(json.dumps([_source(c) for c in code_cells(nb)]).encode()).hexdigest()


def stored_fingerprint(nb: dict) -> str | None:
  return nb.get("metadata", {}).get(KEY, {}).get("code_fingerprint")


def problems(nb: dict) -> list[str]:
  """Why the notebook's outputs are not its code cells' complete run (``[]``: they are)."""
  found = []
  stored, now = stored_fingerprint(nb), fingerprint(nb)
  if stored is None:
    found.append(f"no fingerprint of its code cells in its metadata ({KEY}.code_fingerprint): its outputs were not "
                 "written by the refresh command")
  elif stored != now:
    found.append(f"its code cells changed after its outputs were made (stored fingerprint {stored[:19]}…, code cells "
                 f"now {now[:19]}…): the outputs are stale")
  code = code_cells(nb)
  counts = [c.get("execution_count") for c in code]
  if counts != list(range(1, len(code) + 1)):
    found.append(f"its code cells were not all run, top to bottom in one kernel (execution counts {counts})")
  for i, cell in enumerate(code):
    for out in cell.get("outputs", []):
      if out.get("output_type") == "error":
        found.append(f"code cell {i + 1} raised {out.get('ename')}: {out.get('evalue')}")
  if not any(c.get("outputs") for c in code):
    found.append("it has no outputs")
  return found


def execute(nb, cwd: pathlib.Path, timeout: int = CELL_TIMEOUT_S):
  """Runs every code cell of ``nb`` (an ``nbformat`` notebook, changed in place and returned) top to bottom in a fresh
  kernel of this interpreter, with ``cwd`` as the working directory; raises nbclient's ``CellExecutionError`` on the
  first cell that fails."""
  from jupyter_client.kernelspec import KernelSpecManager
  from jupyter_client.manager import AsyncKernelManager
  from nbclient import NotebookClient

  # No kernelspec directory is searched, so only ipykernel's built-in python3 spec is found, and it launches
  # sys.executable: this interpreter, whatever kernels the machine or the user has registered.
  km = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
  client = NotebookClient(nb, km=km, timeout=timeout, allow_errors=False, record_timing=False,
                          resources={"metadata": {"path": str(cwd)}})
  client.execute(cleanup_kc=True)
  return nb


def stamp(nb) -> None:
  """Stores the code cells' fingerprint in the metadata: call it right after :func:`execute`."""
  nb.metadata[KEY] = {"code_fingerprint": fingerprint(nb)}


def write(nb, path: pathlib.Path) -> None:
  """Writes ``nb`` to ``path`` atomically (a reader sees the old file or the new one, never half of one)."""
  import nbformat

  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      nbformat.write(nb, f)
    # mkstemp's file is private (0600): the file keeps its own mode, a new one gets what open() would give it.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~umask)
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def refresh(path: pathlib.Path) -> list[str]:
  """Executes the notebook at ``path`` in its own folder and writes it back with its outputs and fingerprint; returns
  :func:`problems` of the result (``[]``). The file is left as it was if a cell fails."""
  import nbformat

  nb = nbformat.read(path, as_version=4)
  execute(nb, path.parent)
  stamp(nb)
  nbformat.validate(nb)
  found = problems(nb)
  if not found:
    write(nb, path)
  return found


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("notebooks", nargs="*", type=pathlib.Path, default=[WALKTHROUGH],
                      help=f"the notebooks to execute and rewrite (default: {WALKTHROUGH.relative_to(ROOT)})")
  args = parser.parse_args(argv)
  for path in args.notebooks:
    t0 = time.time()
    found = refresh(path.resolve())
    if found:
      print(f"{path}: not written: " + "; ".join(found), file=sys.stderr)
      return 1
    print(f"{path}: executed and written with its outputs ({time.time() - t0:.0f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
