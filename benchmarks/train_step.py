"""Time of one training step of a config, and the allocator's share of it (system time, minor page faults).

    python benchmarks/train_step.py experiments/configs/cifar10_resnet20.py [--iterations 15]

Builds the config's training state, runs one compiled step on a fixed random batch to warm up, then times
``--iterations`` training steps with ``block_until_ready``, and reports ms/step, images/s, the user and system CPU
seconds and the minor page faults per step (``getrusage``). Run it under different allocators to compare them, e.g.::

    python benchmarks/train_step.py CONFIG                                             # glibc malloc
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 python benchmarks/train_step.py CONFIG
    TCMALLOC_RELEASE_RATE=0 LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \\
        python benchmarks/train_step.py CONFIG

(this script does not re-exec itself under tcmalloc; ``experiments/train.py`` does, see
``experiments/cpu_allocator.py``). Time only on an otherwise idle machine.
"""
import argparse
import os
import pathlib
import resource
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxsnn import data, training  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("config")
  parser.add_argument("--iterations", "--steps", dest="iterations", type=int, default=15,
                      help="training iterations timed (--steps: the old spelling)")
  args = parser.parse_args()
  config = training.load_config(args.config)
  shape = data.spec(config.dataset).image_shape
  state = training.create_train_state(config, jax.random.key(0), iterations_per_epoch=100)
  rng = np.random.default_rng(0)
  n = config.batch_size
  batch = {"image": rng.standard_normal((n,) + tuple(shape), np.float32),
           "label": rng.integers(0, 10, n).astype(np.int32), "mask": np.ones(n, np.float32)}
  state, out = training.train_step(state, batch)
  jax.block_until_ready(out)
  r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
  for _ in range(args.iterations):
    state, out = training.train_step(state, batch)
  jax.block_until_ready(out)
  dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
  print(f"LD_PRELOAD={os.environ.get('LD_PRELOAD', '')!r}: {dt / args.iterations * 1000:.0f} ms/step = "
        f"{n * args.iterations / dt:.0f} img/s; user {r1.ru_utime - r0.ru_utime:.1f} s, "
        f"system {r1.ru_stime - r0.ru_stime:.1f} s, "
        f"{(r1.ru_minflt - r0.ru_minflt) / args.iterations:.0f} minor faults/step")


if __name__ == "__main__":
  main()
