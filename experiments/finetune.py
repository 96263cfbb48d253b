"""Fine-tuning the weights through the SNN at a target T, against the post-training recipe on the same network.

    python experiments/finetune.py --run cifar10_resnet20 --target 8 --iterations 1500 \
        --out experiments/results/finetune/cifar10_resnet20_T8.json        # resumable (checkpoint in the work dir)

1. ``jaxsnn.recipes.low_latency`` at ``--target`` from the first ``--calib_examples`` training images (the committed
   results' settings): θ/2, thresholds for T, SNN calibration, the readout delay;
2. ``jaxsnn.finetune``: ``--iterations`` Adam iterations on the cross-entropy of the SNN's T-step readout with the
   labels, batches of ``--batch`` augmented training images (the training split only: the validation images are held
   out), surrogate gradients through every firing decision; every ``--validate_every`` iterations the accuracy at T on
   the first ``--val_examples`` validation images, and the best there is kept (never the test set);
3. both networks on the test set (``--num_test``, default all) up to T, accuracy after every t.

Writes the results JSON in the schema of ``experiments/main.py`` (methods: the recipe and the fine-tuned network, with
the validation history, the loss curve and the cost: seconds per iteration) and a PNG beside it.
"""
import argparse
import itertools
import pathlib
import time

import common
import jaxsnn.xla
import jaxsnn
from jaxsnn import data, plotting, training


def main():
  jaxsnn.xla.use_fast_cpu_kernels()  # before JAX computes anything (opt out: JAXSNN_FAST_CPU=0)
  training.use_tcmalloc()
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--run", default="cifar10_resnet20")
  parser.add_argument("--target", type=int, default=8, help="the T of the recipe and of the fine-tuning")
  parser.add_argument("--iterations", "--steps", dest="iterations", type=int, default=1500,
                      help="fine-tuning iterations (--steps: the old spelling)")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--learning_rate", type=float, default=1e-4)
  parser.add_argument("--loss", default="labels", choices=("labels", "ann"))
  parser.add_argument("--surrogate", type=float, default=2.0, help="sharpness of the sigmoid surrogate")
  parser.add_argument("--validate_every", type=int, default=100)
  parser.add_argument("--val_examples", type=int, default=1000)
  parser.add_argument("--calib_examples", type=int, default=10000)
  parser.add_argument("--num_test", type=int, default=None, help="first N test images (default: all)")
  parser.add_argument("--eval_num_steps", "--eval_steps", dest="eval_num_steps", type=int, default=None,
                      help="T of the test curves (default: --target; --eval_steps: the old spelling)")
  parser.add_argument("--no_remat", action="store_true", help="keep every step's activations for the backward pass")
  parser.add_argument("--work", default=None, help="checkpoints and caches (default experiments/runs/finetune_<run>)")
  parser.add_argument("--out", default=None, help="results JSON (default <work>/finetune_T<target>.json)")
  args = parser.parse_args()

  run = common.load_run(common.resolve_run(args.run))
  work = pathlib.Path(args.work) if args.work else common.RUNS / f"finetune_{run.name}"
  work.mkdir(parents=True, exist_ok=True)
  out = pathlib.Path(args.out) if args.out else work / f"finetune_T{args.target}.json"
  T, eval_T = args.target, args.eval_num_steps or args.target
  test = common.first(run.test, args.num_test)
  ann = common.ann_accuracy(run, test, 200)
  print(f"{run.name}: ANN {100 * ann:.2f} % on {len(test.labels)} test images", flush=True)

  t0 = time.time()
  snn, recipe = jaxsnn.recipes.low_latency(run.apply_fn, run.variables,
                                           common.train_batches(run, args.calib_examples, 200), T, progress=True)
  recipe_s = time.time() - t0
  print(recipe, flush=True)

  def epochs():  # augmented training batches, epoch after epoch, the same every time the job runs (to resume)
    for epoch in itertools.count():
      yield from data.batches(run.train, args.batch, train=True, mean=run.spec.mean, std=run.spec.std, seed=0,
                              epoch=epoch, augment=data.cifar_augment if run.config.dataset.startswith("cifar")
                              else data.flip_only)

  validation = list(common.batches(run, common.first(run.validation, args.val_examples), 200))
  t0 = time.time()
  tuned, report = jaxsnn.finetune(snn, epochs(), T, iterations=args.iterations, learning_rate=args.learning_rate,
                                  loss=args.loss, surrogate=jaxsnn.surrogates.sigmoid(args.surrogate),
                                  remat=not args.no_remat, validation=validation,
                                  validate_every=args.validate_every, progress=True,
                                  checkpoint=work / f"finetune_T{T}.ckpt.npz")
  finetune_s = time.time() - t0
  print(report, flush=True)

  methods = {}
  for name, net in ((f"low-latency recipe (T={T})", snn), (f"low-latency recipe + fine-tuning through the SNN (T={T})",
                                                            tuned)):
    t0 = time.time()
    ev = jaxsnn.evaluate(net, common.batches(run, test, 200), eval_T, progress=True,
                         checkpoint=work / f"eval_{len(methods)}_T{T}_{eval_T}.npz")
    methods[name] = {"accuracy": ev.accuracy.tolist(), "seconds": round(time.time() - t0, 1),
                     "readout_delay": int(net.readout_delay)}
    print(f"{name}: " + ", ".join(f"T={t}: {100 * ev.accuracy[t - 1]:.2f} %" for t in (4, 8, 16, 32) if t <= eval_T),
          flush=True)
  methods[f"low-latency recipe (T={T})"]["prepare_seconds"] = round(recipe_s, 1)
  done = len(report.details["losses"])
  methods[f"low-latency recipe + fine-tuning through the SNN (T={T})"].update(
      finetune={"steps": args.iterations, "batch": args.batch, "learning_rate": args.learning_rate, "loss": args.loss,
                "surrogate": f"sigmoid({args.surrogate})", "remat": not args.no_remat,
                "seconds": round(finetune_s, 1),
                "seconds_per_step": round(finetune_s / max(done, 1), 3) if done == args.iterations else None,
                "validation_examples": args.val_examples, "validation": report.details["validation"],
                "best_validation_accuracy": report.chose["best_validation_accuracy"],
                "losses": [round(float(v), 5) for v in report.details["losses"]]})
  result = {"checkpoint": run.name, "dataset": run.config.dataset, "model": run.config.model,
            "test_images": int(len(test.labels)), "calibration_images": args.calib_examples, "ann_accuracy": ann,
            "target": T, "methods": methods}
  common.write_json(out, result)
  plotting.plot_accuracy_vs_time({k: v["accuracy"] for k, v in methods.items()}, out.with_suffix(".png"), ann,
                                 title=f"{run.name}: {len(test.labels)} test images, fine-tuned at T = {T}")
  print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
  main()
