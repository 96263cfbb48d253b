"""A batch job over every device and host: calibrate, convert, evaluate the test set, resumable.

    python experiments/batch.py [--run fashion_mnist_small_cnn] [--method "SNM + NeuronNorm"] [--num_steps 128] \
        [--num_test N] [--out experiments/runs/batch]
    python experiments/batch.py --config experiments/configs/batch_tpu_pod.py   # a TPU pod: every host
    # one process per host (here two on one machine; on a TPU pod: --distributed auto on every host):
    python experiments/batch.py ... --coordinator HOST:PORT --num_processes 2 --process_id 0
    python experiments/batch.py ... --coordinator HOST:PORT --num_processes 2 --process_id 1

Each process reads only its part of the calibration images and of the test set (contiguous, cut at a multiple of
``--batch_size``, the micro-batch of every computation: the numbers are a one-process job's by construction), runs on
all its local devices (``jaxsnn.calibrate`` / ``jaxsnn.evaluate`` shard every batch over them), and
writes its progress atomically every few batches to ``<out>/progress_<process>.npz``: killed and started again with
the same command, it continues where it stopped. The calibration maxima are reduced over processes (so every process
converts with the same thresholds); accuracy after every t and the spike totals are gathered on process 0, which
writes ``<out>/result.json`` in the schema of ``experiments/main.py``. The JSON holds no times, so a resumed job
writes the same file as an uninterrupted one.
"""
import argparse
import json
import pathlib

import numpy as np

import common
import jaxsnn.xla


def _shard(name: str, first: int, index: int, count: int, micro_batch: int) -> str:
  """This process's part of the first ``first`` examples of split ``name``: contiguous, cut at a multiple of
  ``micro_batch`` examples (so every example meets the same micro-batch shape and place as in a one-process job)."""
  chunks = -(-first // micro_batch)
  per = -(-chunks // count) * micro_batch
  start, stop = min(first, index * per), min(first, (index + 1) * per)
  return f"{name}[{start}:{stop}]"


def _size(dataset: str, split: str, data_dir) -> int:
  import tensorflow_datasets as tfds
  return tfds.builder(dataset, data_dir=data_dir).info.splits[split].num_examples


def main():
  jaxsnn.xla.use_fast_cpu_kernels()  # before JAX computes anything (opt out: JAXSNN_FAST_CPU=0)
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--run", default="fashion_mnist_small_cnn")
  parser.add_argument("--method", default="SNM + NeuronNorm", help="a method name of experiments/main.py")
  parser.add_argument("--num_steps", "--steps", dest="num_steps", type=int, default=128,
                      help="time steps T (--steps: the old spelling)")
  parser.add_argument("--num_test", type=int, default=None, help="first N test images (default: all)")
  parser.add_argument("--calib_examples", type=int, default=10000)
  parser.add_argument("--batch_size", type=int, default=200, help="examples per device in every computation")
  parser.add_argument("--block_size", type=int, default=None)
  parser.add_argument("--checkpoint_every", type=int, default=5, help="batches between progress writes")
  parser.add_argument("--out", default=str(common.RUNS / "batch"))
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 (multi-process jobs)")
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--distributed", choices=("off", "auto"), default="off",
                      help="auto: jax.distributed.initialize() from the cluster's environment (TPU pods, SLURM)")
  parser.add_argument("--config", default=None,
                      help="a config file whose get_config() returns defaults for these flags (experiments/configs/)")
  parser.add_argument("--stop_after", type=int, default=None, help=argparse.SUPPRESS)  # tests: a kill mid-way
  args, _ = parser.parse_known_args()
  if args.config:
    from jaxsnn import training
    defaults = training.load_config(args.config)
    unknown = set(defaults) - {a.dest for a in parser._actions}
    if unknown:
      raise SystemExit(f"--config {args.config}: unknown keys {sorted(unknown)}")
    parser.set_defaults(**defaults)
  args = parser.parse_args()  # flags on the command line override the config

  import jax
  if args.coordinator or args.distributed == "auto":
    if jax.config.jax_platforms in (None, "", "cpu"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process collectives on CPU
    if args.coordinator:
      jax.distributed.initialize(coordinator_address=args.coordinator, num_processes=args.num_processes,
                                 process_id=args.process_id)
    else:
      jax.distributed.initialize()

  from jax.experimental import multihost_utils
  from jaxsnn import data, training

  index, count = jax.process_index(), jax.process_count()
  run = common.load_run(common.resolve_run(args.run), args.data_dir)
  split = data.splits(run.config.dataset, run.config.val_examples)
  # Each process reads a contiguous part of the images, cut at a multiple of --batch_size (the micro-batch of every
  # computation): the numbers are those of a one-process job by construction.
  test_name, train_name = split["test"].split("[")[0], split["train"].split("[")[0]
  num_test = _size(run.config.dataset, split["test"], args.data_dir) if args.num_test is None else args.num_test
  run.test = data.load(run.config.dataset, _shard(test_name, num_test, index, count, args.batch_size), args.data_dir)
  run.train = data.load(run.config.dataset, _shard(train_name, args.calib_examples, index, count, args.batch_size),
                        args.data_dir)
  methods = {m.name: m for m in common.paper_methods() + common.lowlatency_methods() + common.qcfs_methods()}
  if args.method not in methods:
    raise SystemExit(f"--method: unknown {args.method!r}; choose one of:\n  " + "\n  ".join(methods))
  method = methods[args.method]
  if method.tuned or method.calibrated:
    raise SystemExit("--method: batch.py runs methods without per-T tuning or SNN calibration (their statistics "
                     "would need their own reduction over processes); use experiments/main.py for those.")
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)

  def gather_sum(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a).sum(axis=0), multihost_utils.process_allgather(tree))

  # Calibration: this process's shard, then the maxima reduced over processes.
  train = list(common.batches(run, run.train, args.batch_size))
  local = jaxsnn.calibrate(run.apply_fn, run.variables, train, micro_batch=args.batch_size)
  maxima = jax.tree_util.tree_map(lambda a: np.asarray(a).max(axis=0),
                                  multihost_utils.process_allgather({k: np.asarray(v) for k, v in local.max.items()}))
  stats = jaxsnn.Stats(max={k: jax.numpy.asarray(v) for k, v in maxima.items()},
                       num_samples=int(gather_sum(np.asarray(local.num_samples))))
  snn = common.build_snn(run, method, args.num_steps, train, stats, progress=index == 0)

  batches = common.batches(run, run.test, args.batch_size)
  if args.stop_after is not None:
    batches = _stopping(batches, args.stop_after)
  res = jaxsnn.evaluate(snn, batches, args.num_steps, block_size=args.block_size, progress=index == 0, tallies=True,
                        checkpoint=out / f"progress_{index}.npz", checkpoint_every=args.checkpoint_every,
                        micro_batch=args.batch_size)
  ann_local = training.ann_metrics(run.apply_fn, run.variables, common.batches(run, run.test, args.batch_size),
                                   micro_batch=args.batch_size)
  totals = gather_sum({"correct": res.correct, "count": np.asarray(res.count),
                       "non_finite": np.asarray(res.non_finite),
                       "ann_correct": np.asarray(round(ann_local.accuracy * ann_local.count)),
                       "pos": {k: np.asarray(v) for k, v in res.pos_spikes.items()},
                       "neg": {k: np.asarray(v) for k, v in res.neg_spikes.items()}})
  if index == 0:
    n = int(totals["count"])
    report = {"checkpoint": run.name, "dataset": run.config.dataset, "model": run.config.model, "test_images": n,
              "calibration_images": stats.num_samples, "ann_accuracy": float(totals["ann_correct"]) / n,
              "methods": {method.name: {
                  "accuracy": (np.asarray(totals["correct"], np.float64) / n).tolist(),
                  "non_finite": int(totals["non_finite"]),
                  "spikes": {k: int(totals["pos"][k] + totals["neg"][k]) for k in res.pos_spikes}}}}
    common.write_json(out / "result.json", report)
    acc = report["methods"][method.name]["accuracy"]
    print(json.dumps({"test_images": n, "ann_accuracy": report["ann_accuracy"], "final_accuracy": acc[-1]}))
  if count > 1:
    jax.distributed.shutdown()


class Stopped(SystemExit):
  pass


def _stopping(batches, n):
  for i, b in enumerate(batches):
    if i == n:
      raise Stopped(3)  # as if the job were killed here: progress so far is on disk
    yield b


if __name__ == "__main__":
  main()
