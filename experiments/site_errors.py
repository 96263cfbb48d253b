"""Where a conversion loses accuracy: per-site relative error of the SNN's rate-coded activations against the ANN's.

    python experiments/site_errors.py --run cifar10_resnet20 --num_steps 8 \
        --methods "SNM + NeuronNorm;SNM + NeuronNorm + θ/2 + T-aware θ + calibration (T=8)" [--examples 256]

For each method (names as in ``experiments/main.py --methods``; a method with a target T is simulated for its T, the
others for ``--num_steps``), simulates the first ``--examples`` test images once and reports, for every site in network
order and for the readout, ``sum |rate·θ − a| / sum |a|`` (``jaxsnn.analysis.conversion_error``) and the accuracy.
The SNNs are built exactly as by ``main.py`` (same work dir, so the calibration statistics are shared; thresholds,
tuning and calibration from training images only); the test images are only measured. Writes a JSON (``--out``) and
prints a markdown table, one column per method.
"""
import argparse
import pathlib

import numpy as np

import common
import jaxsnn.xla
import jaxsnn
from jaxsnn import analysis


def main():
  jaxsnn.xla.use_fast_cpu_kernels()  # before JAX computes anything (opt out: JAXSNN_FAST_CPU=0)
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--run", default="fashion_mnist_small_cnn")
  parser.add_argument("--methods", required=True, help="method names separated by ';' (see main.py --methods)")
  parser.add_argument("--targets", default="4,8,16,32", help="targets known to the method names")
  parser.add_argument("--num_steps", "--steps", dest="num_steps", type=int, default=32,
                      help="T of the methods without a target (--steps: the old spelling)")
  parser.add_argument("--examples", type=int, default=256, help="first N test images, one batch")
  parser.add_argument("--calib_examples", type=int, default=10000)
  parser.add_argument("--batch_size", type=int, default=200, help="batch of the calibration passes")
  parser.add_argument("--work", default=None, help="work dir shared with main.py (default experiments/runs/<run>)")
  parser.add_argument("--out", default=None, help="JSON (default <work>/site_errors.json)")
  args = parser.parse_args()
  if args.examples < 1:
    raise SystemExit(f"--examples must be positive, got {args.examples}")

  run = common.load_run(common.resolve_run(args.run))
  methods = common.methods_from(args.methods, [int(t) for t in args.targets.split(",") if t])
  work = pathlib.Path(args.work) if args.work else common.RUNS / run.name
  job = common.Job(run, work, args.examples, args.calib_examples, args.batch_size)
  x, y = run.normalize(job.test.images), np.asarray(job.test.labels)
  ann = float((np.asarray(run.apply_fn(run.variables, x)).argmax(-1) == y).mean())
  out = {"checkpoint": run.name, "examples": int(len(y)), "ann_accuracy": ann, "methods": {}}
  for method in methods:
    num_steps = method.steps(args.num_steps)
    snn = job.snn(method, num_steps)
    trace = jaxsnn.simulate(snn, x, num_steps)
    err = analysis.conversion_error(snn, x, trace)
    acc = float(np.asarray(jaxsnn.accuracy_vs_time(trace, y))[-1])
    out["methods"][method.name] = {"steps": num_steps, "accuracy": acc,
                                   "relative_error": {k: float(v.relative) for k, v in err.items()}}
    print(f"-- {method.name}: T={num_steps} accuracy {100 * acc:.2f} % (ANN {100 * ann:.2f} %)", flush=True)
  path = pathlib.Path(args.out) if args.out else work / "site_errors.json"
  common.write_json(path, out)
  names = list(out["methods"])
  sites = list(next(iter(out["methods"].values()))["relative_error"])
  print("| site | " + " | ".join(names) + " |")
  print("|" + "---|" * (len(names) + 1))
  for s in sites:
    print(f"| {s} | " + " | ".join(f"{out['methods'][n]['relative_error'][s]:.3f}" for n in names) + " |")
  print("| accuracy | " + " | ".join(f"{100 * out['methods'][n]['accuracy']:.2f}" for n in names) + " |")
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
