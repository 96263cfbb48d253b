"""Short runs that choose the settings of ``experiments/fewsteps.py`` on validation images: the quantisation's loss
(distillation from the ReLU net, the labels, or both) and λ's granularity (per layer or per channel), at each L.

    python experiments/fewsteps_choices.py --run fashion_mnist_small_cnn --levels 2,4 --losses distill,labels,both
    python experiments/fewsteps_choices.py --run fashion_mnist_small_cnn --levels 2,4 --losses distill \
        --granularity channel

Each arm: ``jaxsnn.quantize_for_conversion`` for ``--iterations`` Adam iterations (peak rate ``--learning_rate``,
batches of 128 augmented training images) from the committed ReLU net, λ from the first 10,000 training images, the
best iterate on the first 2,000 validation images; then ``jaxsnn.recipes.quantized`` at T = L (λ, θ/2, SNN
calibration, readout delay) and its accuracy at T = L on the same validation images. No test image is read. The arms
are added to ``--out`` (default ``experiments/results/fewsteps/choices_<run>.json``) as they finish.
"""
import argparse
import json
import pathlib
import time

import common
import jaxsnn.xla
import jaxsnn
from jaxsnn import data


def main():
  jaxsnn.xla.use_fast_cpu_kernels()
  common.use_tcmalloc()
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--run", default="fashion_mnist_small_cnn")
  parser.add_argument("--levels", default="2,4")
  parser.add_argument("--losses", default="distill,labels,both")
  parser.add_argument("--granularity", default="layer", choices=("neuron", "channel", "layer"))
  parser.add_argument("--iterations", "--steps", dest="iterations", type=int, default=600,
                      help="the quantisation's iterations (--steps: the old spelling)")
  parser.add_argument("--learning_rate", type=float, default=5e-4)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  run = common.load_run(common.resolve_run(args.run))
  out = pathlib.Path(args.out or common.ROOT / "experiments/results/fewsteps" / f"choices_{run.name}.json")
  results = json.loads(out.read_text()) if out.exists() else {}
  calib = common.train_batches(run, 10000, 200)
  val = list(common.batches(run, common.first(run.validation, 2000), 200))
  augment = data.cifar_augment if run.config.dataset.startswith("cifar") else data.flip_only
  # one augmented epoch after another, the same every time
  epochs = data.epochs(run.train, 128, mean=run.spec.mean, std=run.spec.std, seed=0, augment=augment)

  for L in (int(v) for v in args.levels.split(",")):
    for loss in args.losses.split(","):
      key = f"L={L} {loss}" + ("" if args.granularity == "layer" else f" {args.granularity}")
      if key in results:
        continue
      t0 = time.time()
      apply_q, variables_q, report = jaxsnn.quantize_for_conversion(
          run.apply_fn, run.variables, epochs, calibration=calib, levels=L, iterations=args.iterations, loss=loss,
          learning_rate=args.learning_rate, validation=val, validate_every=200, granularity=args.granularity)
      snn, _ = jaxsnn.recipes.quantized(apply_q, variables_q, calib, L, check_examples=0)
      results[key] = {"history": report.details["validation"], "relu": report.chose["relu_validation_accuracy"],
                      "best": report.chose["best_validation_accuracy"],
                      "snn_at_T=L": float(jaxsnn.evaluate(snn, val, L).accuracy[-1]),
                      "steps": args.iterations, "learning_rate": args.learning_rate, "seconds": time.time() - t0}
      print(key, json.dumps(results[key]), flush=True)
      common.write_json(out, results)


if __name__ == "__main__":
  main()
