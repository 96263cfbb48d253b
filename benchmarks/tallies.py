"""What the Trace's spike tallies cost: one simulation with and without them (the same jitted program; XLA drops the
tallies when only the readout is returned).

    python benchmarks/tallies.py [--model resnet20] [--batch 64] [--num_steps 32] [--repeats 3]

``jaxsnn.simulate`` called as it is (and ``jaxsnn.evaluate``, which needs the tallies for firing rates) always
computes each neuron's positive and negative spike counts; a jitted caller that keeps only ``trace.outputs`` does not.
Until a75eccf the tallies were kept in the narrowest int type that holds T (int8 up to T = 127), which XLA:CPU
accumulates several times slower than int32: ``git checkout 8552794 -- jaxsnn`` runs the old code for the "before"
column of benchmarks/RESULTS.md. Time it on an idle machine.
"""
import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="resnet20", choices=("small_cnn", "resnet20", "vgg16_w025"))
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--num_steps", "--steps", dest="num_steps", type=int, default=32,
                      help="time steps T (--steps: the old spelling)")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  import jax

  import jaxsnn
  from scaling import random_setup
  from timing import timed

  _, _, x, snn = random_setup(args.model, args.batch)
  with_tallies = jax.jit(lambda s, x: jaxsnn.simulate(s, x, args.num_steps))
  readout_only = jax.jit(lambda s, x: jaxsnn.simulate(s, x, args.num_steps).outputs)
  work = args.batch * args.num_steps
  full = work / timed(lambda: with_tallies(snn, x), args.repeats)[1]
  bare = work / timed(lambda: readout_only(snn, x), args.repeats)[1]
  print(f"{args.model}, batch {args.batch}, T = {args.num_steps}: with tallies {full:,.0f} "
        f"images*steps/s; readout only {bare:,.0f} images*steps/s ({full / bare:.2f}x)")


if __name__ == "__main__":
  main()
