"""Timing as every benchmark here does it (the house rule: compile first, then the median of repeats).

Imported by the scripts of this folder (their own directory is on the path when they run as scripts).
"""
import statistics
import time


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
