"""The pictures of the analysis guide's "Recording a run" section, from the committed Fashion-MNIST SmallCNN.

    python experiments/recording_figures.py [--run experiments/checkpoints/fashion_mnist_small_cnn]

Converts the network by the paper's recipe (NeuronNorm thresholds from the first 5,000 training images), records
every site of a 64-step run on the first 8 test images (``jaxsnn.simulate(..., record=..., record_potentials=True)``)
and draws a spike raster, the membrane potentials of three neurons of the last hidden site that fire about 8 times,
and the firing rate per site over time (``jaxsnn.plotting``); then
evaluates 1,000 test images with spike counts recorded at T = 1..64 and draws accuracy and energy against T
(``plot_recipes``). Writes ``docs/src/assets/recording_{raster,membrane,rates,accuracy_energy}.png``.
"""
import argparse

import numpy as np

import common
import jaxsnn.xla
import jaxsnn
from jaxsnn import analysis, plotting

ROOT = common.ROOT
STEPS = (1, 2, 4, 8, 16, 32, 64)


def main():
  jaxsnn.xla.use_fast_cpu_kernels()  # before JAX computes anything (opt out: JAXSNN_FAST_CPU=0)
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--run", default=str(common.DEFAULT_RUN))
  parser.add_argument("--out", default=str(ROOT / "docs/src/assets"))
  args = parser.parse_args()
  run = common.load_run(args.run)
  snn, _ = jaxsnn.recipes.paper(run.apply_fn, run.variables, common.train_batches(run, 5000, 500))
  x = run.normalize(run.test.images[:8])
  sites = list(snn.site_names)
  trace = jaxsnn.simulate(snn, x, 64, record=sites, record_potentials=True)
  name = f"{run.name}, test image 0, label {int(run.test.labels[0])}"
  plotting.plot_raster({s: trace.spikes[s] for s in sites[1::2]}, f"{args.out}/recording_raster.png",
                       max_neurons=60, title=f"Spike raster ({name})")
  site = sites[-1]
  fired = (np.asarray(trace.spikes[site][:, 0]) != 0).reshape(64, -1).sum(axis=0)
  neurons = np.argsort(np.abs(fired - 8), kind="stable")[:3]  # three that fire about 8 times in 64 steps
  plotting.plot_membrane(trace.potentials[site], snn.thresholds[site], trace.spikes[site],
                         f"{args.out}/recording_membrane.png", neurons=neurons,
                         title=f"{site} ({name}): membrane potential; dashed: θ; ▲/▼: spikes")
  plotting.plot_rates_over_time(trace.spikes, f"{args.out}/recording_rates.png",
                                title=f"Firing rate per site at every step ({run.name}, 8 test images)")
  test = common.first(run.test, 1000)
  ev = jaxsnn.evaluate(snn, common.batches(run, test, 250), 64, record_steps=STEPS)
  points = {t: (float(ev.accuracy[t - 1]), float(analysis.energy(snn, analysis.recorded_counts(ev, t)).ratio))
            for t in STEPS}
  plotting.plot_recipes({"SNM + NeuronNorm (the paper)": points}, f"{args.out}/recording_accuracy_energy.png",
                        ann_accuracy=common.ann_accuracy(run, test, 250),
                        title=f"{run.name}: accuracy and energy against T (1,000 test images)")
  print("accuracy, E_SNN/E_ANN: " + ", ".join(f"T={t} {100 * a:.1f}% {e:.2f}" for t, (a, e) in points.items()))
  print(f"wrote {args.out}/recording_*.png; spikes per neuron per step at T=64: " +
        ", ".join(f"{s} {float(np.mean(np.asarray(trace.spikes[s]) != 0)):.3f}" for s in sites))


if __name__ == "__main__":
  main()
