"""The paper's evidence on a committed checkpoint, on the full test set: Fig. 4, Fig. 5, Eq. 15 and the test leak.

    python experiments/paper.py --run cifar10_vgg16_w025 [--num_steps 128] [--num_test N]

Calibrates on training images, converts under the four arms of the paper's Fig. 4 (IF + LayerNorm, SNM + LayerNorm,
IF + NeuronNorm, SNM + NeuronNorm; every neuron starts at v = 0, as in the paper), simulates the whole test set once
per arm up to T (one run gives every t), and the authors' own threshold protocol (per neuron and per batch slot of
256, maxima over the test set and then the training set: it leaks the test set) beside the clean SNM + NeuronNorm.
Writes, in ``--out_dir`` (default ``experiments/runs/paper``; the committed copies are in
``experiments/results/paper/``):

* ``<run>.json``: the schema of ``experiments/main.py`` (method names as above), plus per method the average firing
  rate, the per-site rates (positive and negative apart) and the Eq. 15 energy ratio at T = 1, 2, 4, ..., T;
* ``<run>_fig4.png``: accuracy vs T, four curves and the leaking protocol, the ANN as a line;
* ``<run>_fig5.png``: firing rate per layer at T = 32 for SNM + NeuronNorm, positive and negative spikes apart, and
  the network's average rate.

Energy (Eq. 15): E_SNN / E_ANN = (MACs of the first layer × 4.6 pJ + SynOps × 0.9 pJ) / (MACs × 4.6 pJ), per image;
SynOps = spikes × fan-out, fan-outs read off the network's own ops with an average pool folded into the next layer's
synapses (``pooling="fold"``: every spike reaches every neuron its pooled value feeds; the JSON also has the
``"average"`` convention, firing rate × the next layer's MACs, the literature's usual estimate).
"""
import argparse
import pathlib

import common
import jaxsnn.xla
from jaxsnn import plotting


def main():
  jaxsnn.xla.use_fast_cpu_kernels()  # before JAX computes anything (opt out: JAXSNN_FAST_CPU=0)
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--run", default="fashion_mnist_small_cnn")
  parser.add_argument("--num_steps", "--steps", dest="num_steps", type=int, default=128,
                      help="time steps T (--steps: the old spelling)")
  parser.add_argument("--num_test", type=int, default=None, help="first N test images (default: all)")
  parser.add_argument("--calib_examples", type=int, default=10000)
  parser.add_argument("--batch_size", type=int, default=200)
  parser.add_argument("--no_authors", action="store_true", help="skip the authors' leaking protocol")
  parser.add_argument("--work", default=None, help="method results (default experiments/runs/<run>)")
  parser.add_argument("--out_dir", default=str(common.RUNS / "paper"))
  parser.add_argument("--data_dir", default=None)
  args = parser.parse_args()

  run = common.load_run(common.resolve_run(args.run), args.data_dir)
  work = pathlib.Path(args.work) if args.work else common.RUNS / run.name
  job = common.Job(run, work, args.num_test, args.calib_examples, args.batch_size)
  ann = common.ann_accuracy(run, job.test, args.batch_size)
  print(f"{run.name}: ANN accuracy on {job.settings['test_images']} test images {100 * ann:.2f} %", flush=True)
  methods = common.paper_methods() + ([] if args.no_authors else [common.Method("SNM", authors=True)])
  results = {}
  for method in methods:
    print(f"-- {method.name}", flush=True)
    results[method.name] = job.result(method, args.num_steps)
  report = common.report(job, results, ann)
  out_dir = pathlib.Path(args.out_dir)
  out = out_dir / f"{run.name}.json"
  common.write_json(out, report)
  plotting.plot_accuracy_vs_time({k: v["accuracy"] for k, v in results.items()}, out_dir / f"{run.name}_fig4.png",
                                 ann, title=f"{run.name}: {report['test_images']} test images (Fig. 4)")
  snm = results["SNM + NeuronNorm"]
  t = "32" if "32" in snm.get("at", {}) else max(snm.get("at", {"1": None}), key=int)
  at = snm["at"][t]
  plotting.plot_firing_rates(at["positive_rates"], at["negative_rates"], out_dir / f"{run.name}_fig5.png",
                             average=at["average_firing_rate"],
                             title=f"{run.name}, SNM + NeuronNorm, T = {t} (Fig. 5)")
  print(common.table(report))
  for name, r in results.items():
    costs = [f"T={s}: rate {r['at'][s]['average_firing_rate']:.4f}, E {r['at'][s]['energy_ratio']:.3f}"
             for s in ("32", "64") if s in r.get("at", {})]
    print(f"{name}: " + "; ".join(costs))
  print(f"wrote {out} and its PNGs")


if __name__ == "__main__":
  main()
