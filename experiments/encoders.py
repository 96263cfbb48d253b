"""What input coding costs in accuracy: direct current against Poisson rate coding and phase coding, after every T.

    python experiments/encoders.py [--run experiments/checkpoints/fashion_mnist_small_cnn] [--test_examples 1000]
                                   [--num_steps 256] [--seeds 3]

The network is converted by the paper's recipe (``jaxsnn.recipes.paper``: SNM neurons, NeuronNorm thresholds from the
first ``--calib_examples`` training images, never test images) and simulated on the first ``--test_examples`` test
images with each code of ``jaxsnn.encoders``, the accuracy read after every t = 1..T from one run:

* ``direct``: the normalised image as an analog current every step (jaxsnn's default);
* ``poisson``: each pixel a Bernoulli spike train with its intensity in [0, 1] as the rate (``low`` / ``high``: the
  normalised values of a black and a white pixel), ``--seeds`` keys (batch b of seed s draws from
  ``fold_in(key(s), b)``);
* ``phase``: each pixel's intensity in 8 bits, one bit per step with its binary weight (period 8 steps).

Writes ``experiments/results/encoders/<run>.json`` and ``.png`` (accuracy against T, the ANN as a line;
``--plot_only FILE.json`` redraws a result's PNG).
"""
import argparse
import json
import pathlib
import time

import jax
import numpy as np

import common
import jaxsnn.xla
import jaxsnn
from jaxsnn import encoders, plotting

ROOT = common.ROOT
REPORT_STEPS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def accuracy_curve(snn, batches, num_steps: int, encoder_of) -> np.ndarray:
  """Accuracy after every t over the batches; ``encoder_of(b)`` codes batch b."""
  correct, total = 0.0, 0
  for b, batch in enumerate(batches):
    trace = jaxsnn.simulate(snn, batch["image"], num_steps, encoder=encoder_of(b), tallies=False)
    n = int(batch["mask"].sum())  # the real examples (a last batch is padded)
    trace = trace._replace(outputs=trace.outputs[:, :n])
    correct = correct + n * np.asarray(jaxsnn.accuracy_vs_time(trace, batch["label"][:n]))
    total += n
  return correct / total


def main():
  jaxsnn.xla.use_fast_cpu_kernels()  # before JAX computes anything (opt out: JAXSNN_FAST_CPU=0)
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--run", default=str(common.DEFAULT_RUN))
  parser.add_argument("--calib_examples", type=int, default=10000)
  parser.add_argument("--test_examples", type=int, default=1000)
  parser.add_argument("--num_steps", "--steps", dest="num_steps", type=int, default=256,
                      help="time steps T (--steps: the old spelling)")
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--bits", type=int, default=8)
  parser.add_argument("--batch_size", type=int, default=250)
  parser.add_argument("--out", default=None, help="default: experiments/results/encoders/<run>.json")
  parser.add_argument("--plot_only", default=None, help="redraw the PNG of this result JSON (no simulation)")
  args = parser.parse_args()
  if args.plot_only:
    plot(json.loads(pathlib.Path(args.plot_only).read_text()), pathlib.Path(args.plot_only).with_suffix(".png"))
    return
  t0 = time.time()
  run = common.load_run(args.run)
  out = pathlib.Path(args.out or ROOT / "experiments/results/encoders" / f"{run.name}.json")
  snn, _ = jaxsnn.recipes.paper(run.apply_fn, run.variables, common.train_batches(run, args.calib_examples, 500))
  test = common.first(run.test, args.test_examples)
  batches = list(common.batches(run, test, args.batch_size))
  ann_accuracy = common.ann_accuracy(run, test, args.batch_size)
  # The normalised values of a black (0) and a white (1) pixel: the codes send the pixel intensity.
  mean, std = np.asarray(run.spec.mean, np.float32), np.asarray(run.spec.std, np.float32)
  low, high = -mean / std, (1 - mean) / std
  codes = {"direct": [lambda b: None]}
  codes["poisson"] = [lambda b, s=s: encoders.poisson(jax.random.fold_in(jax.random.key(s), b), low, high)
                      for s in range(args.seeds)]
  codes[f"phase ({args.bits} bits)"] = [lambda b: encoders.phase(args.bits, low, high)]
  curves, seconds = {}, {}
  for name, encoder_ofs in codes.items():
    t1 = time.time()
    curves[name] = [accuracy_curve(snn, batches, args.num_steps, enc) for enc in encoder_ofs]
    seconds[name] = time.time() - t1
    print(f"{name}: " + ", ".join(f"T={t} {100 * np.mean([c[t - 1] for c in curves[name]]):.2f}%"
                                  for t in REPORT_STEPS if t <= args.num_steps) + f" ({seconds[name]:.0f} s)")
  shown = [t for t in REPORT_STEPS if t <= args.num_steps]
  result = {
      "network": run.name, "dataset": run.config.dataset, "recipe": "jaxsnn.recipes.paper (SNM, NeuronNorm)",
      "calib_examples": args.calib_examples, "test_examples": int(len(test.labels)), "num_steps": args.num_steps,
      "seeds": args.seeds, "bits": args.bits, "ann_accuracy": ann_accuracy,
      "input_range": {"low": low.tolist(), "high": high.tolist()},
      "accuracy": {name: [c.tolist() for c in cs] for name, cs in curves.items()},  # per seed, after t = 1..T
      "summary": {name: {str(t): {"mean": float(np.mean([c[t - 1] for c in cs])),
                                  "min": float(np.min([c[t - 1] for c in cs])),
                                  "max": float(np.max([c[t - 1] for c in cs]))} for t in shown}
                  for name, cs in curves.items()},
      "seconds": seconds, "total_seconds": time.time() - t0,
  }
  common.write_json(out, result)
  plot(result, out.with_suffix(".png"))
  print(f"wrote {out} and {out.with_suffix('.png')} ({time.time() - t0:.0f} s)")


def plot(result: dict, path) -> None:
  plotting.plot_accuracy_vs_time({name: np.mean(cs, axis=0) for name, cs in result["accuracy"].items()}, path,
                                 ann_accuracy=result["ann_accuracy"],
                                 title=f"{result['network']}: input codes\n({result['test_examples']} test images; "
                                       f"poisson: mean of {result['seeds']} keys)")


if __name__ == "__main__":
  main()
