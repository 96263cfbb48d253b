"""Timing as every benchmark here does it (the house rule: compile first, then the median of repeats), and the
results files they write (atomically: an interrupted run never leaves half a file).

Imported by the scripts of this folder (their own directory is on the path when they run as scripts).
"""
import json
import os
import pathlib
import statistics
import time


def write_json(path, obj) -> None:
  """Writes ``obj`` as JSON to ``path`` through a temporary file beside it and a rename (strict JSON: no NaN)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


def timed(fn, repeats: int) -> tuple[float, float]:
  """``(seconds of the first call: compile + run, median seconds of `repeats` further calls)``, each call waited
  for with ``jax.block_until_ready``."""
  import jax
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return first, statistics.median(times)
