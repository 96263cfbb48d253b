"""How the simulator scales: compile time vs T, peak memory vs T and block size, time vs batch size.

    python benchmarks/scaling.py [--model resnet20] [--out benchmarks/results/scaling.json]

* compile time (``jit(...).lower(...).compile()``, wall seconds, median of ``--repeats`` fresh compiles, the two T
  alternating) of the step-major simulator at T = 32 and 1024: the time loop is a ``lax.scan``, so it must not grow
  with T;
* peak memory: XLA's own accounting of the compiled program (``memory_analysis()``: arguments + outputs + temporaries,
  bytes), for the step-major schedule at several T and the layer-major schedule at several block sizes K;
* time per image-step vs batch size (step-major, T = 32; compile first, median of repeats).

Random weights with the model's shapes (time does not depend on training), thresholds calibrated on the same inputs.
Writes a JSON and prints markdown tables for benchmarks/RESULTS.md. Time it on an idle machine.
"""
import argparse
import pathlib
import platform
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

import jaxsnn  # noqa: E402
from jaxsnn import models  # noqa: E402
from timing import timed, write_json  # noqa: E402

SHAPES = {"small_cnn": ((28, 28, 1), models.SmallCNN), "resnet20": ((32, 32, 3), models.ResNet20),
          "vgg16_w025": ((32, 32, 3), lambda **k: models.VGG16(width=0.25, **k))}


def random_setup(name: str, batch: int):
  """``(apply_fn, variables, x, snn)`` for a model's shapes with random weights: a batch of random inputs, the
  thresholds calibrated on it, SNM, v0 = θ/2 (time per step does not depend on training)."""
  shape, make = SHAPES[name]
  model = make(num_classes=10)
  x = jax.random.normal(jax.random.key(0), (batch,) + shape)
  variables = model.init(jax.random.key(1), x[:1], train=False)
  apply_fn = lambda v, x: model.apply(v, x, train=False)  # noqa: E731
  th = jaxsnn.thresholds(jaxsnn.calibrate(apply_fn, variables, [x]))
  return apply_fn, variables, x, jaxsnn.convert(apply_fn, variables, x[:1], th, initial_potential=0.5)


def lowered(snn, x, steps, block):
  return jax.jit(lambda s, x: jaxsnn.simulate(s, x, steps, block_size=block).outputs).lower(snn, x)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="resnet20", choices=sorted(SHAPES))
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default=str(ROOT / "benchmarks/results/scaling.json"))
  args = parser.parse_args()

  shape = SHAPES[args.model][0]
  _, _, x, snn = random_setup(args.model, args.batch)
  out = {"model": args.model, "batch": args.batch, "jax": jax.__version__, "machine": platform.processor() or
         platform.machine(), "compile_seconds": {}, "memory_bytes": {}, "seconds_per_image_step": {}}

  # Each compile is of a fresh jit (no cache hit); T = 32 and T = 1024 alternate, the median of the repeats is kept
  # (a single compile is noisy: the first one in a process also pays one-time set-up).
  compile_times = {32: [], 1024: []}
  for _ in range(args.repeats):
    for steps in compile_times:
      low = lowered(snn, x, steps, None)
      t0 = time.perf_counter()
      low.compile()
      compile_times[steps].append(time.perf_counter() - t0)
  for steps, times in compile_times.items():
    out["compile_seconds"][str(steps)] = round(statistics.median(times), 3)
    print(f"compile T={steps}: median {out['compile_seconds'][str(steps)]} s of "
          f"{', '.join(f'{t:.3f}' for t in times)}", flush=True)

  def peak(steps, block):
    m = lowered(snn, x, steps, block).compile().memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)

  for steps in (32, 128, 512):
    out["memory_bytes"][f"step-major T={steps}"] = peak(steps, None)
  for block in (1, 4, 16, 64):
    out["memory_bytes"][f"layer-major K={block} T=64"] = peak(64, block)
  for key, value in out["memory_bytes"].items():
    print(f"memory {key}: {value / 2**20:.1f} MiB", flush=True)

  for batch in (1, 16, 64, 128, 256):
    xb = jax.random.normal(jax.random.key(2), (batch,) + shape)
    _, t = timed(lambda: jaxsnn.simulate(snn, xb, 32).outputs, args.repeats)
    out["seconds_per_image_step"][str(batch)] = t / (batch * 32)
    print(f"batch {batch}: {batch * 32 / t:.0f} images·steps/s", flush=True)

  write_json(args.out, out)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
