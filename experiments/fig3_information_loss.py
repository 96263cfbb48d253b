"""The paper's Fig. 3 on a trained network: information loss over (alpha, T), LayerNorm vs NeuronNorm.

    python experiments/fig3_information_loss.py [--run experiments/checkpoints/fashion_mnist_small_cnn] [--site 1]

``--run`` is a committed reference checkpoint (``experiments/checkpoints/NAME``: ``NAME.msgpack`` with its
``.config.json`` and ``.metrics.jsonl``) or a run directory of ``experiments/train.py`` (``config.json``,
``best.jaxsnn``, ``metrics.jsonl``). Reads the config and checkpoint, calibrates on training
images, takes the chosen site's activations on test images, and writes
``experiments/figures/fig3_information_loss.png`` and a JSON of the numbers beside it. All logic is library code
(``jaxsnn.calibrate``, ``jaxsnn.analysis.information_loss_surface``, ``plot_information_loss``).
"""
import argparse
import pathlib

import numpy as np

import common
import jaxsnn.xla
import jaxsnn
from jaxsnn import analysis, plotting

ROOT = common.ROOT


def main():
  jaxsnn.xla.use_fast_cpu_kernels()  # before JAX computes anything (opt out: JAXSNN_FAST_CPU=0)
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--run", default=str(common.DEFAULT_RUN))
  parser.add_argument("--site", type=int, default=1, help="index of the ReLU site, in network order")
  parser.add_argument("--calib_examples", type=int, default=10000)
  parser.add_argument("--eval_examples", type=int, default=1000)
  parser.add_argument("--out", default=str(ROOT / "experiments/figures/fig3_information_loss.png"))
  args = parser.parse_args()

  best = common.best_epoch(args.run)  # before the checkpoint: a running training may write a newer one meanwhile
  run = common.load_run(args.run)
  config, apply_fn, variables, test, norm = run.config, run.apply_fn, run.variables, run.test, run.normalize

  stats = jaxsnn.calibrate(apply_fn, variables, common.train_batches(run, args.calib_examples, 500))
  sites = [k for k in stats.max if k != "output"]
  site = sites[args.site]
  acts = analysis.site_activations(apply_fn, variables, norm(test.images[:args.eval_examples]))[site]

  alphas = np.linspace(0.05, 1.0, 20)
  grid = np.unique(np.round(np.geomspace(1, 256, 33))).astype(np.float32)  # the T axis
  surface = analysis.information_loss_surface(acts, stats.max[site], alphas, grid, granularities=("layer", "neuron"))

  net = (f"{config.model} on {config.dataset}, checkpoint of epoch {best.get('epoch', '?')} "
         f"(val acc {best.get('val_accuracy', float('nan')):.3f})")
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  plotting.plot_information_loss(surface, alphas, grid, out,
                                 title=f"Information loss at {site} ({acts.shape[0]} test images)\n{net}")
  summary = {
      "network": net, "site": site, "site_shape": list(acts.shape[1:]), "eval_examples": int(acts.shape[0]),
      "calib_examples": stats.num_samples, "alphas": alphas.tolist(), "steps": grid.tolist(),
      "loss": {k: np.asarray(v).tolist() for k, v in surface.items()},
  }
  common.write_json(out.with_suffix(".json"), summary)
  i1 = int(np.argmin(np.abs(alphas - 1.0)))
  for t in (8, 32, 128):
    j = int(np.argmin(np.abs(grid - t)))
    print(f"alpha=1, T={int(grid[j])}: LayerNorm {float(surface['layer'][i1, j]):.4g}  "
          f"NeuronNorm {float(surface['neuron'][i1, j]):.4g}")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
