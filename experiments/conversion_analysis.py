"""Conversion analysis of a trained network: accuracy vs T, firing rates, SynOps / energy and per-site error, for
each normalization (NeuronNorm, channel, LayerNorm, layer 99.99th percentile) and the authors' test-leaking protocol.

    python experiments/conversion_analysis.py [--run experiments/checkpoints/fashion_mnist_small_cnn] [--examples 256]

``--run``: a committed reference checkpoint or a run directory of ``experiments/train.py`` (see
``fig3_information_loss.py``).

Thresholds are calibrated on training images only, except for the row ``authors (leaks test)``, which reproduces the
authors' protocol (per neuron and per batch slot, maxima over the test and then the train batches) for comparison.
Writes ``experiments/figures/conversion_analysis.json`` and prints a table.
"""
import argparse
import pathlib

import numpy as np

import common
import jaxsnn.xla
import jaxsnn
from jaxsnn import analysis

ROOT = common.ROOT


def summarize(snn, x, y, trace, checkpoints):
  acc = np.asarray(jaxsnn.accuracy_vs_time(trace, y))
  e = analysis.energy(snn, trace)
  e_avg = analysis.energy(snn, trace, pooling="average")
  err = analysis.conversion_error(snn, x, trace)
  return {
      "accuracy": {str(t): float(acc[t - 1]) for t in checkpoints},
      "firing_rates": {k: float(v) for k, v in analysis.firing_rates(trace).items()},
      "average_firing_rate": float(analysis.average_firing_rate(trace)),
      "synops_per_step": float(sum(analysis.synops(snn, trace).values())),
      "energy_ratio": float(e.ratio), "energy_ratio_average_pooling": float(e_avg.ratio), "ann_macs": float(e.ann_macs), "first_layer_macs": float(e.first_layer_macs),
      "relative_error": {k: float(v.relative) for k, v in err.items()},
  }


def main():
  jaxsnn.xla.use_fast_cpu_kernels()  # before JAX computes anything (opt out: JAXSNN_FAST_CPU=0)
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--run", default=str(common.DEFAULT_RUN))
  parser.add_argument("--examples", type=int, default=256, help="test images simulated (one batch)")
  parser.add_argument("--num_steps", type=int, default=64)
  parser.add_argument("--calib_examples", type=int, default=10000)
  parser.add_argument("--out", default=str(ROOT / "experiments/figures/conversion_analysis.json"))
  args = parser.parse_args()

  best = common.best_epoch(args.run)
  run = common.load_run(args.run)
  config, apply_fn, variables, train, test, norm = (run.config, run.apply_fn, run.variables, run.train, run.test,
                                                    run.normalize)
  x, y = norm(test.images[:args.examples]), test.labels[:args.examples]
  ann_acc = float((np.asarray(apply_fn(variables, x)).argmax(-1) == y).mean())
  calib = [norm(train.images[i:i + 500]) for i in range(0, args.calib_examples, 500)]
  stats = jaxsnn.calibrate(apply_fn, variables, calib, histogram=True)
  rules = {
      "neuron": jaxsnn.thresholds(stats, "neuron"),
      "channel": jaxsnn.thresholds(stats, "channel"),
      "layer": jaxsnn.thresholds(stats, "layer"),
      "layer p99.99": jaxsnn.thresholds(stats, "layer", percentile=99.99),
  }
  checkpoints = [t for t in (4, 8, 16, 32, 64, 128, 256) if t <= args.num_steps]
  results = {}
  snn = jaxsnn.convert(apply_fn, variables, x, rules["neuron"])
  for name, th in rules.items():
    snn = snn.replace(thresholds=th)
    trace = jaxsnn.simulate(snn, x, args.num_steps, block_size=16)
    results[name] = summarize(snn, x, y, trace, checkpoints)
    print(name, results[name]["accuracy"], flush=True)
  # The authors' protocol: batch slots of the simulated batch's size; test batches first, then train batches.
  b = args.examples
  test_batches = [norm(test.images[i:i + b]) for i in range(0, len(test.labels) - b + 1, b)]
  train_batches = [norm(train.images[i:i + b]) for i in range(0, args.calib_examples - b + 1, b)]
  slots = jaxsnn.authors_protocol.thresholds(apply_fn, variables, test_batches + train_batches)
  trace = jaxsnn.authors_protocol.simulate(snn, x, slots, args.num_steps, block_size=16)
  results["authors (leaks test)"] = summarize(snn, x, y, trace, checkpoints)
  print("authors", results["authors (leaks test)"]["accuracy"], flush=True)

  net = (f"{config.model} on {config.dataset}, checkpoint of epoch {best.get('epoch', '?')} "
         f"(val acc {best.get('val_accuracy', float('nan')):.3f})")
  out = pathlib.Path(args.out)
  common.write_json(out, {"network": net, "examples": args.examples, "num_steps": args.num_steps,
                             "ann_accuracy": ann_acc, "calib_examples": stats.num_samples,
                             "results": results})
  print(f"{net}; ANN accuracy on these {args.examples} test images: {ann_acc:.4f}")
  header = "".join(f"T={t:<7}" for t in checkpoints)
  print(f"{'thresholds':22s}{header}avg rate  SynOps/step  E_SNN/E_ANN (fold / average pooling)")
  for name, r in results.items():
    accs = "".join(f"{r['accuracy'][str(t)]:<9.4f}" for t in checkpoints)
    print(f"{name:22s}{accs}{r['average_firing_rate']:<10.4f}{r['synops_per_step']:<13.4g}{r['energy_ratio']:.4f} / "
          f"{r['energy_ratio_average_pooling']:.4f}")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
