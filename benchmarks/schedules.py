"""Speed of the two simulation schedules: step-major vs time-blocked layer-major (exact and batched contractions).

    python benchmarks/schedules.py [--model small_cnn] [--num_steps 64] [--batches 1,16,128] [--blocks 8,64]

Random weights with the shapes of the chosen model (speed does not depend on training); thresholds calibrated on the
same random inputs so that neurons fire at realistic rates. Each configuration is compiled first, then timed with
``block_until_ready`` over repeats; the median is reported, with images*steps per second and the ratio to
step-major. Prints a markdown table and appends nothing anywhere: copy it into benchmarks/RESULTS.md with the command.
"""
import argparse
import pathlib
import platform
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

import jaxsnn  # noqa: E402
from jaxsnn import models  # noqa: E402
from timing import timed  # noqa: E402

SHAPES = {"small_cnn": ((28, 28, 1), 10), "resnet20": ((32, 32, 3), 10), "vgg16": ((32, 32, 3), 10)}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="small_cnn", choices=sorted(SHAPES))
  parser.add_argument("--width", type=float, default=1.0)
  parser.add_argument("--num_steps", "--steps", dest="num_steps", type=int, default=64,
                      help="time steps T (--steps: the old spelling)")
  parser.add_argument("--batches", default="1,16,128")
  parser.add_argument("--blocks", default="8,64")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  shape, classes = SHAPES[args.model]
  kwargs = {"num_classes": classes}
  if args.width != 1.0:
    kwargs["width"] = args.width
  model = models.get_model(args.model, **kwargs)
  apply_fn = lambda v, x: model.apply(v, x, train=False)  # noqa: E731
  print(f"{args.model} (width {args.width}), T = {args.num_steps}, {jax.devices()[0].platform} "
        f"{platform.processor() or platform.machine()}, jax {jax.__version__}\n")
  print("| batch | schedule | median s | images·steps/s | vs step-major |")
  print("|---|---|---|---|---|")
  for batch in map(int, args.batches.split(",")):
    x = jax.random.normal(jax.random.PRNGKey(0), (batch,) + shape)
    variables = model.init(jax.random.PRNGKey(1), x, train=False)
    stats = jaxsnn.calibrate(apply_fn, variables, [x])
    snn = jaxsnn.convert(apply_fn, variables, x, jaxsnn.thresholds(stats))
    base = timed(lambda: jaxsnn.simulate(snn, x, args.num_steps).outputs, args.repeats)[1]
    rows = [("step-major", base)]
    for k in map(int, args.blocks.split(",")):
      for exact in (True, False):
        t = timed(lambda: jaxsnn.simulate(snn, x, args.num_steps, block_size=k, exact=exact).outputs, args.repeats)[1]
        rows.append((f"layer-major K={k}" + ("" if exact else ", exact=False"), t))
    for name, t in rows:
      print(f"| {batch} | {name} | {t:.3f} | {batch * args.num_steps / t:,.0f} | {base / t:.2f}× |")


if __name__ == "__main__":
  main()
