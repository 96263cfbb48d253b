"""A few time steps from a trained ReLU network: conversion-aware fine-tuning, then the QCFS recipe, then fine-tuning
through the SNN (issue 33), on the full test set.

    python experiments/fewsteps.py --run cifar10_resnet20      # resumable: run the same command again after a kill
    python experiments/fewsteps.py --run cifar10_resnet20 --tiny   # a rehearsal of every stage in minutes

For each QCFS level count L of ``--plan`` (``L:T,T,...``):

1. ``jaxsnn.quantize_for_conversion``: every ReLU site of the committed net becomes ``jaxsnn.qcfs(z, λ, L)`` with λ
   from the 99.9th percentile of the first ``--calib_examples`` training images; ``--qat_iterations`` Adam
   iterations on augmented training batches (the training split only), the loss ``--loss``; the best iterate on the
   validation images (never the test set);
2. "QAT L + λ, θ/2": ``jaxsnn.recipes.quantized`` without a target T (one network for every T);
3. for each T of the plan, "+ calibration + delayed readout (T)": ``jaxsnn.recipes.few_steps`` at T with the
   quantised net (its report: every stage's validation accuracy at T, the ablation);

then for each ``--finetune T:iterations``, the L whose step-3 network is best at T on the validation images,
fine-tuned through the SNN at T (``jaxsnn.finetune``, labels, surrogate gradients). Every network: accuracy after every
t up to ``--eval_num_steps`` on the test set (rates and energy at 1, 2, 4, ..., 32) and on the ``--val_examples``
validation images, which alone choose the method at each T (``selection``). Writes
``experiments/results/fewsteps/<run>.json`` (the schema of ``experiments/main.py``) and a PNG beside it; every stage is
cached in ``experiments/runs/fewsteps_<run>``.
"""
import argparse
import json
import pathlib
import time

import common
import jaxsnn.xla
import jaxsnn
from jaxsnn import data, plotting

RECORD = (1, 2, 4, 8, 16, 32, 64)


def parse_plan(text: str) -> dict:
  """``"4:1,2,4,8 8:4,8"`` -> ``{4: (1, 2, 4, 8), 8: (4, 8)}``."""
  out = {}
  for part in text.split():
    levels, targets = part.split(":")
    out[int(levels)] = tuple(int(t) for t in targets.split(","))
  return out


def main():
  jaxsnn.xla.use_fast_cpu_kernels()  # before JAX computes anything (opt out: JAXSNN_FAST_CPU=0)
  common.use_tcmalloc()
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--run", default="cifar10_resnet20")
  parser.add_argument("--plan", default="4:1,2,4,8 8:8", help="'L:T,T ...': QCFS levels and the targets T of each")
  parser.add_argument("--qat_iterations", "--qat_steps", dest="qat_iterations", default="4000,2500",
                      help="quantisation iterations per L of the plan (--qat_steps: the old spelling)")
  parser.add_argument("--loss", default="distill", choices=("labels", "distill", "both"))
  parser.add_argument("--learning_rate", type=float, default=5e-4)
  parser.add_argument("--granularity", default="layer", choices=("neuron", "channel", "layer"),
                      help="λ per neuron / channel / layer")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--finetune", default="4:200 8:100",
                      help="'T:iterations ...': fine-tuning through the SNN at T")
  parser.add_argument("--finetune_batch", type=int, default=64)
  parser.add_argument("--finetune_learning_rate", type=float, default=1e-4)
  parser.add_argument("--eval_num_steps", "--eval_steps", dest="eval_num_steps", type=int, default=32,
                      help="T of the test curves (--eval_steps: the old spelling)")
  parser.add_argument("--calib_examples", type=int, default=10000)
  parser.add_argument("--val_examples", type=int, default=2000)
  parser.add_argument("--num_test", type=int, default=None, help="first N test images (default: all)")
  parser.add_argument("--validate_every", type=int, default=500)
  parser.add_argument("--tiny", action="store_true", help="rehearsal: a few iterations and a few hundred images")
  parser.add_argument("--save_networks", default="", metavar="T,T,...",
                      help="also save (jaxsnn.save) the network chosen at each of these T into the cache dir as "
                           "chosen_T<T>.jaxsnn (benchmarks/peers.py reads them); a network whose result is cached is "
                           "rebuilt and must give its cached validation accuracies again")
  parser.add_argument("--work", default=None, help="cache dir (default experiments/runs/fewsteps_<run>)")
  parser.add_argument("--out", default=None, help="results JSON (default experiments/results/fewsteps/<run>.json)")
  args = parser.parse_args()
  if args.tiny:
    args.qat_iterations, args.eval_num_steps = "6,4", 8
    args.calib_examples, args.val_examples, args.num_test, args.validate_every = 400, 200, 200, 3

  run = common.load_run(common.resolve_run(args.run))
  suffix = "_tiny" if args.tiny else ""
  work = pathlib.Path(args.work) if args.work else common.RUNS / f"fewsteps_{run.name}{suffix}"
  work.mkdir(parents=True, exist_ok=True)
  out = pathlib.Path(args.out) if args.out else (
      work / f"{run.name}.json" if args.tiny else common.ROOT / "experiments/results/fewsteps" / f"{run.name}.json")
  plan = parse_plan(args.plan)
  qat_iterations = dict(zip(plan, (int(s) for s in args.qat_iterations.split(","))))
  finetune_plan = {int(t): [int(n) for n in s.split(",")] for t, s in (p.split(":") for p in args.finetune.split())}
  if args.tiny:
    finetune_plan = {next(iter(plan.values()))[0]: [2]}
  unplanned = [t for t in finetune_plan if not any(t in targets for targets in plan.values())]
  if unplanned:
    raise SystemExit(f"--finetune: no L of --plan targets T = {unplanned}")
  T_max = args.eval_num_steps
  test = common.first(run.test, args.num_test)
  train = common.train_batches(run, args.calib_examples, 200)
  val = list(common.batches(run, common.first(run.validation, args.val_examples), 200))
  timings_file = work / "timings.json"
  timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}

  def timed(key, seconds):
    timings.setdefault(key, round(seconds, 1))  # the first complete run of a stage (a resumed one counts its part)
    common.write_json(timings_file, timings)

  ann_file = work / f"ann_{len(test.labels)}.json"
  if ann_file.exists():
    ann = json.loads(ann_file.read_text())["accuracy"]
  else:
    ann = common.ann_accuracy(run, test, 200)
    common.write_json(ann_file, {"accuracy": ann})
  print(f"{run.name}: ANN {100 * ann:.2f} % on {len(test.labels)} test images", flush=True)

  augment = data.cifar_augment if run.config.dataset.startswith("cifar") else data.flip_only

  def epochs(batch):  # augmented epochs, the same every time the job runs (to resume)
    return data.epochs(run.train, batch, mean=run.spec.mean, std=run.spec.std, seed=0, augment=augment)

  methods, pending = {}, []

  def write(partial: bool):
    report = {"checkpoint": run.name, "dataset": run.config.dataset, "model": run.config.model,
              "test_images": int(len(test.labels)), "calibration_images": args.calib_examples, "ann_accuracy": ann,
              "settings": {k: v for k, v in vars(args).items() if k not in ("work", "out", "save_networks")},
              "timings_seconds": timings, "methods": methods}
    picks = common.chosen(report, [t for t in RECORD if t <= T_max])
    report["selection"] = {"validation_images": args.val_examples, "rule": "best accuracy at T on the validation images",
                           "chosen": {str(t): p[0] if p else None for t, p in picks.items()}}
    if partial:
      report["pending"] = list(pending)
    common.write_json(out, report)
    plotting.plot_accuracy_vs_time({k: v["accuracy"] for k, v in methods.items()}, out.with_suffix(".png"), ann,
                                   title=f"{run.name}: {len(test.labels)} test images, QCFS fine-tuning + SNN")

  save_at = [int(t) for t in args.save_networks.split(",") if t]
  previous = json.loads(out.read_text()) if save_at and out.exists() else None

  def to_save(name: str) -> list:
    """The T of --save_networks at which ``name`` is the committed results' choice."""
    if previous is None:
      return []
    return [t for t in save_at if previous["selection"]["chosen"].get(str(t)) == name]

  def save(snn, name: str):
    for t in to_save(name):
      jaxsnn.save(work / f"chosen_T{t}.jaxsnn", snn)
      print(f"saved {work / f'chosen_T{t}.jaxsnn'}: {name}", flush=True)

  def evaluated(name: str, method: dict, build):
    """The method's cached result, or: build its network, evaluate it on the test and validation images, cache."""
    slug = "".join(c if c.isalnum() else "_" for c in name.replace("θ/2", "half").replace("λ", "lambda"))
    path = work / f"{slug}.{len(test.labels)}img.json"
    if path.exists():
      methods[name] = json.loads(path.read_text())
      if to_save(name) and not all((work / f"chosen_T{t}.jaxsnn").exists() for t in to_save(name)):
        snn, _ = build()  # the same network again (every stage is deterministic, the fine-tuning resumes its end)
        v = jaxsnn.evaluate(snn, val, T_max, progress=True).accuracy.tolist()
        if v != methods[name]["validation"]["accuracy"]:
          raise SystemExit(f"fewsteps.py: {name} rebuilt gives other validation accuracies than its cached result "
                           f"({path}); not saved")
        save(snn, name)
      return methods[name]
    t0 = time.time()
    snn, report = build()
    prepare = time.time() - t0
    save(snn, name)
    t0 = time.time()
    res = jaxsnn.evaluate(snn, common.batches(run, test, 200), T_max, progress=True,
                          record_steps=[t for t in RECORD if t <= T_max], checkpoint=path.with_suffix(".progress.npz"))
    seconds = time.time() - t0
    t0 = time.time()
    v = jaxsnn.evaluate(snn, val, T_max, progress=True)
    result = {"name": name, "method": method, "steps": T_max, "accuracy": res.accuracy.tolist(),
              "seconds": round(seconds, 1), "prepare_seconds": round(prepare, 1),
              "validation": {"images": args.val_examples, "accuracy": v.accuracy.tolist(),
                             "seconds": round(time.time() - t0, 1)},
              "readout_delay": int(snn.readout_delay), "non_finite": res.non_finite, "at": common.cost_at(snn, res)}
    if report is not None:
      result["stages"] = [{"tool": s.tool, "seconds": round(s.seconds, 1), "validation_accuracy": s.validation_accuracy}
                          for s in report.stages]
      result["report"] = str(report)
    common.write_json(path, result)
    path.with_suffix(".progress.npz").unlink(missing_ok=True)
    methods[name] = result
    print(f"{name}: " + ", ".join(f"T={t}: {100 * res.accuracy[t - 1]:.2f} %" for t in RECORD if t <= T_max)
          + f" (validation at T={T_max}: {100 * v.accuracy[-1]:.2f} %)", flush=True)
    return result

  names = {}
  for L in plan:
    names[L] = {"base": f"QAT L={L} + λ, θ/2"}
    names[L].update({T: f"QAT L={L} + λ, θ/2 + calibration + delayed readout (T={T})" for T in plan[L]})
  pending[:] = [n for L in plan for n in names[L].values()] + [
      f"fine-tuning at T={t}, {n} iterations" for t, ns in finetune_plan.items() for n in ns]
  quantized = {}

  def fine_tune(T: int, iterations: int):
    candidates = [L for L in plan if T in plan[L]]
    best = max(candidates, key=lambda L: methods[names[L][T]]["validation"]["accuracy"][T - 1])
    name = f"QAT L={best} + λ, θ/2 + calibration + delayed readout + fine-tuning through the SNN, {iterations} iterations (T={T})"
    t0 = time.time()
    evaluated(name, {"levels": best, "target": T, "finetune": {  # "steps": the results schema's key (iterations)
        "steps": iterations, "batch": args.finetune_batch, "learning_rate": args.finetune_learning_rate,
        "loss": "labels",
        "chosen_levels_by": "validation accuracy at T of the calibrated, delayed QCFS networks"}},
        lambda: jaxsnn.recipes.few_steps(run.apply_fn, run.variables, train, T, validation=val,
                                         quantized=quantized[best], finetune_iterations=iterations,
                                         finetune_batches=epochs(args.finetune_batch),
                                         finetune_learning_rate=args.finetune_learning_rate, checkpoint_dir=work,
                                         progress=True))
    timed(f"fine-tuning T={T}, {iterations} iterations", time.time() - t0)
    pending.remove(f"fine-tuning at T={T}, {iterations} iterations")
    write(bool(pending))

  for L in plan:
    t0 = time.time()
    resumed = (work / f"quantize_L{L}.npz").exists()
    quantized[L] = jaxsnn.quantize_for_conversion(
        run.apply_fn, run.variables, epochs(args.batch), calibration=train, levels=L, iterations=qat_iterations[L],
        validation=val, loss=args.loss, learning_rate=args.learning_rate, validate_every=args.validate_every,
        granularity=args.granularity, progress=True, checkpoint=work / f"quantize_L{L}.npz")
    q = quantized[L][2]
    print(q, flush=True)
    timed(f"quantize L={L}" + (" (resumed)" if resumed else ""), time.time() - t0)
    info = {"levels": L, "loss": args.loss, "steps": qat_iterations[L], "batch": args.batch,  # schema: "steps"
            "granularity": args.granularity,
            "learning_rate": args.learning_rate, "validation": q.details["validation"],
            "relu_validation_accuracy": q.chose["relu_validation_accuracy"],
            "best_validation_accuracy": q.chose["best_validation_accuracy"], "lambda": q.chose["lambda"],
            "initial_lambda": q.chose["initial_lambda"], "losses": [round(float(v), 5) for v in q.details["losses"]]}
    evaluated(names[L]["base"], {"levels": L, "target": None, "quantization": info},
              lambda L=L: jaxsnn.recipes.quantized(quantized[L][0], quantized[L][1], train, None, check_examples=0))
    pending.remove(names[L]["base"])
    write(True)
    for T in plan[L]:
      evaluated(names[L][T], {"levels": L, "target": T},
                lambda L=L, T=T: jaxsnn.recipes.few_steps(run.apply_fn, run.variables, train, T, validation=val,
                                                          quantized=quantized[L], progress=True))
      pending.remove(names[L][T])
      write(True)
    # Fine-tuning at T as soon as every L that targets T is done (the longer plan goes on after it).
    done = list(plan)[:list(plan).index(L) + 1]
    for T, lengths in finetune_plan.items():
      for iterations in lengths:
        if f"fine-tuning at T={T}, {iterations} iterations" in pending and all(l in done for l in plan if T in plan[l]):
          fine_tune(T, iterations)
  write(False)
  print(common.cost_table(json.loads(out.read_text()), [t for t in RECORD if t <= T_max]))
  print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
  main()
