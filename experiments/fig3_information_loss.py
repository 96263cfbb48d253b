"""The paper's Fig. 3 on a trained network: information loss over (alpha, T), LayerNorm vs NeuronNorm.

    python experiments/fig3_information_loss.py [--run experiments/checkpoints/fashion_mnist_small_cnn] [--site 1]

``--run`` is a committed reference checkpoint (``experiments/checkpoints/NAME``: ``NAME.msgpack`` with its
``.config.json`` and ``.metrics.jsonl``) or a run directory of ``experiments/train.py`` (``config.json``,
``best.msgpack``, ``metrics.jsonl``). Reads the config and checkpoint, calibrates on training
images, takes the chosen site's activations on test images, and writes
``experiments/figures/fig3_information_loss.png`` and a JSON of the numbers beside it. All logic is library code
(``jaxsnn.calibrate``, ``jaxsnn.analysis.information_loss_surface``, ``plot_information_loss``).
"""
import argparse
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import jaxsnn  # noqa: E402
from jaxsnn import analysis, data, training  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


DEFAULT_RUN = ROOT / "experiments" / "checkpoints" / "fashion_mnist_small_cnn"


def run_files(run) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
  """(config, checkpoint, metrics) paths of a run directory or of a committed checkpoint ``.../NAME[.msgpack]``."""
  run = pathlib.Path(run)
  if run.is_dir():
    files = run / "config.json", run / "best.msgpack", run / "metrics.jsonl"
  else:
    stem = str(run)[:-len(".msgpack")] if run.name.endswith(".msgpack") else str(run)
    files = tuple(pathlib.Path(stem + ext) for ext in (".config.json", ".msgpack", ".metrics.jsonl"))
  missing = [str(f) for f in files if not f.is_file()]
  if missing:
    raise SystemExit(f"--run {run}: missing {', '.join(missing)}. Pass a run directory of experiments/train.py "
                     "(config.json, best.msgpack, metrics.jsonl) or a committed checkpoint such as "
                     "experiments/checkpoints/cifar10_resnet20 (.msgpack, .config.json, .metrics.jsonl).")
  return files


def load_run(run):
  """(config, apply_fn, variables, train Arrays, test Arrays, normalize) of a run or committed checkpoint."""
  config_file, checkpoint, _ = run_files(run)
  config = training.TrainConfig(**json.loads(config_file.read_text()))
  model = training.build_model(config)
  variables = training.load_variables(checkpoint)
  variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
  apply_fn = lambda v, x: model.apply(v, x, train=False)  # noqa: E731
  spec = data.spec(config.dataset)
  split = data.splits(config.dataset, config.val_examples)
  train = data.load(config.dataset, split["train"], data_dir=config.data_dir)
  test = data.load(config.dataset, split["test"], data_dir=config.data_dir)
  return config, apply_fn, variables, train, test, lambda images: data.normalize(images, spec.mean, spec.std)


def best_epoch(run) -> dict:
  """The metrics line of the run's best validation accuracy (the epoch best.msgpack holds)."""
  lines = run_files(run)[2].read_text().splitlines()
  metrics = [json.loads(line) for line in lines if line.strip()]
  return max((m for m in metrics if "val_accuracy" in m), key=lambda m: m["val_accuracy"], default={})


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--run", default=str(DEFAULT_RUN))
  parser.add_argument("--site", type=int, default=1, help="index of the ReLU site, in network order")
  parser.add_argument("--calib_examples", type=int, default=10000)
  parser.add_argument("--eval_examples", type=int, default=1000)
  parser.add_argument("--out", default=str(ROOT / "experiments/figures/fig3_information_loss.png"))
  args = parser.parse_args()

  best = best_epoch(args.run)  # before the checkpoint: a running training may write a newer one meanwhile
  config, apply_fn, variables, train, test, norm = load_run(args.run)

  calib = (norm(train.images[i:i + 500]) for i in range(0, args.calib_examples, 500))
  stats = jaxsnn.calibrate(apply_fn, variables, calib)
  sites = [k for k in stats.max if k != "output"]
  site = sites[args.site]
  acts = analysis.site_activations(apply_fn, variables, norm(test.images[:args.eval_examples]))[site]

  alphas = np.linspace(0.05, 1.0, 20)
  steps = np.unique(np.round(np.geomspace(1, 256, 33))).astype(np.float32)
  surface = analysis.information_loss_surface(acts, stats.max[site], alphas, steps, norms=("layer", "neuron"))

  net = (f"{config.model} on {config.dataset}, checkpoint of epoch {best.get('epoch', '?')} "
         f"(val acc {best.get('val_accuracy', float('nan')):.3f})")
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  analysis.plot_information_loss(surface, alphas, steps, out,
                                 title=f"Information loss at {site} ({acts.shape[0]} test images)\n{net}")
  summary = {
      "network": net, "site": site, "site_shape": list(acts.shape[1:]), "eval_examples": int(acts.shape[0]),
      "calib_examples": stats.num_samples, "alphas": alphas.tolist(), "steps": steps.tolist(),
      "loss": {k: np.asarray(v).tolist() for k, v in surface.items()},
  }
  out.with_suffix(".json").write_text(json.dumps(summary))
  i1 = int(np.argmin(np.abs(alphas - 1.0)))
  for t in (8, 32, 128):
    j = int(np.argmin(np.abs(steps - t)))
    print(f"alpha=1, T={int(steps[j])}: LayerNorm {float(surface['layer'][i1, j]):.4g}  "
          f"NeuronNorm {float(surface['neuron'][i1, j]):.4g}")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
