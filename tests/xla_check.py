"""Run by tests/test_xla.py in a process started with jaxsnn's fast CPU flags: the two schedules and a scan over the
step function stay bit-identical under XLA's YNNPACK kernels. Prints one JSON line of which comparisons held."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jaxsnn  # noqa: E402
from conftest import residual_setup  # noqa: E402


def main():
  apply_fn, variables, x, th = residual_setup()
  out = {"flags": os.environ.get("XLA_FLAGS", "")}
  for neuron in (jaxsnn.SNM(), jaxsnn.IF()):
    snn = jaxsnn.convert(apply_fn, variables, x, th, neuron=neuron, initial_potential=0.5)
    ref = jaxsnn.simulate(snn, x, 20)
    blocks = [jaxsnn.simulate(snn, x, 20, block_size=k) for k in (3, 8)]

    def body(state, _):
      state, _ = jaxsnn.step(snn, state)
      return state, jaxsnn.readout(snn, state)

    _, scanned = jax.lax.scan(body, jaxsnn.init_state(snn, x), None, length=20)
    same = all(np.array_equal(b.outputs, ref.outputs) and all(np.array_equal(b.pos_spikes[k], ref.pos_spikes[k])
                                                                for k in ref.pos_spikes) for b in blocks)
    out[neuron.name] = bool(same and np.array_equal(scanned, ref.outputs))
  print(json.dumps(out))


if __name__ == "__main__":
  main()
