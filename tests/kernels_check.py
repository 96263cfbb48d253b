"""Run by tests/test_xla.py in a fresh process (its environment chosen by the test): prints one JSON line with the
compiler options jaxsnn's computations get here and a digest of what a small network's calibration, simulation and
readout delay compute."""
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402

import jaxsnn  # noqa: E402
from conftest import random_net  # noqa: E402
from jaxsnn._src import jitting  # noqa: E402


def main():
  apply_fn, variables, x = random_net(4, allow_max_pool=True)
  stats = jaxsnn.calibrate(apply_fn, variables, [x])
  snn = jaxsnn.convert(apply_fn, variables, x, jaxsnn.thresholds(stats), initial_potential=0.5)
  trace = jaxsnn.simulate(snn, x, 24)
  _, delay = jaxsnn.choose_readout_delay(snn, [x], 12)
  h = hashlib.sha256()
  for a in [*stats.max.values(), trace.outputs, *trace.pos_spikes.values(), delay.details["agreement"]]:
    h.update(np.ascontiguousarray(np.asarray(a)).tobytes())
  print(json.dumps({"options": jitting.options(), "digest": h.hexdigest()}))


if __name__ == "__main__":
  main()
