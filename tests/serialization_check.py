"""Run by tests/test_serialization.py in a fresh process that has none of the models' code: loads each saved network
``<dir>/<name>.jaxsnn`` with jaxsnn alone, simulates it on ``<dir>/<name>.x.npy`` in both schedules and writes the
outputs and spike tallies to ``<dir>/<name>.loaded.npz``.

Usage: python serialization_check.py DIR STEPS BLOCK NAME...
"""
import sys

import numpy as np

import jaxsnn


def runs(snn, x, steps: int, block: int) -> dict:
  """The outputs and the spike tallies of every site, step-major and layer-major."""
  out = {}
  for schedule, block_size in (("step", None), ("layer", block)):
    trace = jaxsnn.simulate(snn, x, steps, block_size=block_size, tallies=True)
    out[f"{schedule}/outputs"] = np.asarray(trace.outputs)
    for site in trace.pos_spikes:
      out[f"{schedule}/pos/{site}"] = np.asarray(trace.pos_spikes[site])
      out[f"{schedule}/neg/{site}"] = np.asarray(trace.neg_spikes[site])
  return out


def main():
  folder, steps, block, names = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
  for name in names:
    snn = jaxsnn.load(f"{folder}/{name}.jaxsnn")
    np.savez(f"{folder}/{name}.loaded.npz", **runs(snn, np.load(f"{folder}/{name}.x.npy"), steps, block))
  model_code = sorted(m for m in ("flax", "equinox", "conftest", "test_serialization") if m in sys.modules)
  assert not model_code, f"the fresh process imported {model_code}"


if __name__ == "__main__":
  main()
