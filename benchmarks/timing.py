"""Timing as every benchmark here does it (the house rule: compile first, then the median of repeats), and the
results files they write (atomically: an interrupted run never leaves half a file).

Imported by the scripts of this folder (their own directory is on the path when they run as scripts).
"""
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from jaxsnn.files import write_json  # noqa: E402,F401  (the results files: written atomically)


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
