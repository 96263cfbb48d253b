"""The main job: convert a trained CNN to an SNN, simulate it on the test set and report accuracy vs time steps.

    python experiments/main.py [--steps 128] [--num_test 1000] [--full]

Default: the committed Fashion-MNIST SmallCNN checkpoint; thresholds from training images only (the training split,
never the test set); SNM + NeuronNorm (the paper's method) against the usual IF + LayerNorm baseline. Writes
``experiments/results/main.json`` and a PNG of accuracy vs T beside it.
"""
import argparse
import pathlib
import time

import numpy as np

import common
import jaxsnn
from jaxsnn import data, training

ROOT = common.ROOT

DEFAULT_CONFIG = ROOT / "experiments/configs/fashion_mnist_small_cnn.py"
DEFAULT_CHECKPOINT = ROOT / "experiments/checkpoints/fashion_mnist_small_cnn.msgpack"
METHODS = {  # name: (neuron, norm)
    "SNM + NeuronNorm": (jaxsnn.SNM(), "neuron"),
    "IF + LayerNorm": (jaxsnn.IF(), "layer"),
    "IF + NeuronNorm": (jaxsnn.IF(), "neuron"),
}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default=str(DEFAULT_CONFIG))
  parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
  parser.add_argument("--data_dir", default=None, help="tfds data dir (default: tfds's own)")
  parser.add_argument("--steps", type=int, default=128, help="time steps T")
  parser.add_argument("--num_test", type=int, default=1000, help="first N test images (--full: all)")
  parser.add_argument("--full", action="store_true", help="the whole test set")
  parser.add_argument("--calib_examples", type=int, default=10000, help="training images for the thresholds")
  parser.add_argument("--batch_size", type=int, default=200)
  parser.add_argument("--block_size", type=int, default=None, help="layer-major block K (default step-major)")
  parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of: " + ", ".join(METHODS))
  parser.add_argument("--out", default=str(ROOT / "experiments/results/main.json"))
  args = parser.parse_args()

  config = common.load_config(args.config)
  spec = data.spec(config.dataset)
  model = training.build_model(config)
  apply_fn = lambda v, x: model.apply(v, x, train=False)  # noqa: E731
  variables = training.load_variables(args.checkpoint)
  split = data.splits(config.dataset, config.val_examples)
  train = data.load(config.dataset, split["train"], args.data_dir)
  test = data.load(config.dataset, spec.test_split, args.data_dir)
  if not args.full:
    test = data.Arrays(test.images[:args.num_test], test.labels[:args.num_test])
  calib = data.Arrays(train.images[:args.calib_examples], train.labels[:args.calib_examples])

  def test_batches():
    for b in data.batches(test, args.batch_size, train=False, mean=spec.mean, std=spec.std):
      yield b["image"], b["label"], b["mask"]

  ann = training.evaluate(model.apply, variables, test, args.batch_size, spec.mean, spec.std)
  print(f"ANN test accuracy on {ann.get('count', len(test.labels))} images: {ann['accuracy']:.4f}")
  t0 = time.time()
  stats = jaxsnn.calibrate(apply_fn, variables, (b["image"] for b in data.batches(
      calib, args.batch_size, train=False, mean=spec.mean, std=spec.std)))
  print(f"calibrated on {stats.num_samples} training images in {time.time() - t0:.1f}s")

  report = {"config": args.config, "checkpoint": args.checkpoint, "steps": args.steps, "test_images":
            int(len(test.labels)), "calibration_images": stats.num_samples, "ann_accuracy": ann["accuracy"],
            "methods": {}}
  example = next(test_batches())[0]
  for name in args.methods.split(","):
    neuron, norm = METHODS[name]
    snn = jaxsnn.convert(apply_fn, variables, example, jaxsnn.thresholds(stats, norm=norm), neuron=neuron)
    t0 = time.time()
    res = jaxsnn.evaluate(snn, test_batches(), args.steps, args.block_size, progress=True)
    seconds = time.time() - t0
    report["methods"][name] = {"accuracy": res["accuracy"].tolist(), "seconds": seconds}
  _print_table(report)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(report, indent=1))
  tmp.replace(out)  # atomic: a killed run never leaves half a report
  _plot(report, out.with_suffix(".png"))
  print(f"wrote {out} and {out.with_suffix('.png')}")


def _print_table(report):
  steps = [t for t in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if t <= report["steps"]]
  print(f"\nSNN test accuracy (%) after T steps; ANN {100 * report['ann_accuracy']:.2f}%, "
        f"{report['test_images']} test images")
  print(f"{'method':<20}" + "".join(f"{t:>8}" for t in steps) + f"{'time':>9}")
  for name, r in report["methods"].items():
    acc = np.asarray(r["accuracy"])
    print(f"{name:<20}" + "".join(f"{100 * acc[t - 1]:8.2f}" for t in steps) + f"{r['seconds']:8.0f}s")


def _plot(report, path):
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print("matplotlib not installed: no plot")
    return
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, r in report["methods"].items():
    acc = np.asarray(r["accuracy"])
    ax.plot(np.arange(1, len(acc) + 1), 100 * acc, label=name)
  ax.axhline(100 * report["ann_accuracy"], color="k", ls="--", lw=1, label="ANN")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("time steps T")
  ax.set_ylabel("test accuracy (%)")
  ax.set_ylim(0, 100)
  ax.set_title(f"{pathlib.Path(report['config']).stem}: {report['test_images']} test images")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


if __name__ == "__main__":
  main()
