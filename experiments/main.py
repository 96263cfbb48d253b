"""The main job: convert a trained network to SNNs by several methods, simulate the test set, report accuracy vs T.

    python experiments/main.py [--run fashion_mnist_small_cnn] [--methods readme] [--num_steps 128] [--num_test 1000]

``--run``: a committed checkpoint name (``experiments/checkpoints/NAME``) or a run directory of ``train.py``.
``--methods``: ``readme`` (the paper's method, the usual IF + LayerNorm baseline, and jaxsnn's low-latency recipe),
``paper`` (the four arms of the paper's Fig. 4), ``lowlatency`` (the paper's method, each low-latency tool alone and
stacked, for the ``--targets``), ``endtoend`` (the stacked recipe, then end-to-end tuning through the simulation),
``qcfs`` (a QCFS network with its own thresholds), ``qcfs+lowlatency`` (those, and the stacked recipe on the
QCFS network, thresholds tuned for each target instead of its own), ``all``, or method names
separated by ``;``. Thresholds, tuning and calibration use training images only, never the test set; every
method is one call of ``jaxsnn.recipes`` (``common.build_snn``).

``--select N`` also scores every method on the first N images of the validation split (the last training images,
held out from training and from every threshold): the tables' "best recipe at T" is the one chosen there, never on
the test set. ``--from_results PATH`` seeds the work dir with the test results of a committed JSON of the same
settings, so that only what is missing runs (e.g. the validation scores of a committed table).

Writes ``experiments/runs/<run>/main.json`` (``{"test_images", "ann_accuracy", "methods": {name: {"accuracy":
[after t = 1..T], ...}}}``) and a PNG beside it (accuracy vs T; for more than 8 methods with targets, accuracy and
energy vs T with one line per recipe through its targets), and prints a table; the committed reference results are
written only when ``--out`` says so (see experiments/RESULTS.md). Each method's result is kept in the work dir as
soon as it is done (and its evaluation checkpoints every few batches): run the same command again to resume.
"""
import argparse
import json
import pathlib

import common
import jaxsnn.xla
from jaxsnn import plotting


def main():
  jaxsnn.xla.use_fast_cpu_kernels()  # before JAX computes anything (opt out: JAXSNN_FAST_CPU=0)
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--run", default="fashion_mnist_small_cnn")
  parser.add_argument("--methods", default="readme")
  parser.add_argument("--targets", default="8,16", help="target T of the tuned / calibrated methods")
  parser.add_argument("--num_steps", "--steps", dest="num_steps", type=int, default=128,
                      help="time steps T of the methods without a target (--steps: the old spelling)")
  parser.add_argument("--num_test", type=int, default=1000, help="first N test images (--full: all)")
  parser.add_argument("--full", action="store_true", help="the whole test set")
  parser.add_argument("--calib_examples", type=int, default=10000, help="training images for the thresholds")
  parser.add_argument("--batch_size", type=int, default=200)
  parser.add_argument("--block_size", type=int, default=None, help="layer-major block K (default step-major)")
  parser.add_argument("--data_dir", default=None, help="tfds data dir (default: tfds's own)")
  parser.add_argument("--work", default=None, help="where method results are kept (default experiments/runs/<run>)")
  parser.add_argument("--out", default=None, help="results JSON (default <work>/main.json)")
  parser.add_argument("--select", type=int, default=0,
                      help="validation images on which every method is also scored (the choice of the best at T)")
  parser.add_argument("--from_results", default=None,
                      help="a results JSON whose test results (same settings) are reused instead of run again")
  parser.add_argument("--report_only", action="store_true",
                      help="report the methods already done in the work dir (the rest listed as pending); run none")
  args = parser.parse_args()

  run = common.load_run(common.resolve_run(args.run), args.data_dir)
  targets = [int(t) for t in args.targets.split(",") if t]
  methods = common.methods_from(args.methods, targets)
  num_test = None if args.full else args.num_test
  work = pathlib.Path(args.work) if args.work else common.RUNS / run.name
  job = common.Job(run, work, num_test, args.calib_examples, args.batch_size, block_size=args.block_size,
                   select=args.select)
  if args.from_results:
    job.seed(json.loads(pathlib.Path(args.from_results).read_text())["methods"])
  ann = common.ann_accuracy(run, job.test, args.batch_size)
  print(f"{run.name}: ANN accuracy on {job.settings['test_images']} test images {100 * ann:.2f} %", flush=True)
  out = pathlib.Path(args.out) if args.out else work / "main.json"
  results = {}
  for i, method in enumerate(methods):
    if args.report_only:
      cached = job.cached(method, args.num_steps)
      if cached is not None:
        results[method.name] = cached
        if args.select and job.path_of(method, "validation").exists():
          cached["validation"] = job.validation(method, args.num_steps)
      continue
    print(f"-- {method.name}", flush=True)
    results[method.name] = job.result(method, args.num_steps)
    # The report so far, after every method: a long run killed midway leaves what it did.
    common.write_json(out, common.report(job, results, ann, [m.name for m in methods[i + 1:]]))
  pending = [m.name for m in methods if m.name not in results]
  report = common.report(job, results, ann, pending)
  if args.select:
    report["selection"] = {"validation_images": args.select, "rule": "best accuracy at T on the validation images",
                           "chosen": {str(t): p and p[0] for t, p in common.chosen(report, targets).items()}}
  common.write_json(out, report)
  if pending:
    print(f"pending (not run yet): {len(pending)} of {len(methods)} methods")
  title = f"{run.name}: {report['test_images']} test images"
  if len(methods) > 8 and any(m.target for m in methods):  # too many curves: a line per recipe through its targets
    plotting.plot_recipes(common.recipes(report), out.with_suffix(".png"), ann, title=title)
  else:
    plotting.plot_accuracy_vs_time({k: v["accuracy"] for k, v in results.items()}, out.with_suffix(".png"), ann,
                                   title=title)
  print(common.table(report))
  if args.select:
    print(common.cost_table(report, targets))
  print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
  main()
