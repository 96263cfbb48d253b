"""Which XLA:CPU options make the simulator (and the ANN) faster here, and do they change any result?

    python benchmarks/xla_flags.py [--model resnet20] [--num_steps 16] [--batch 128]

Each configuration runs in its own process with ``XLA_FLAGS`` set (XLA reads them once, at start-up): the model's ANN
pass and the step-major simulation of ``--num_steps`` steps, both on one batch, compiled first, then the median of
``--repeats`` calls; the configurations take turns over ``--rounds`` rounds (rotated orders: this machine drifts
by ±15 % over minutes) and the table gives the median of the rounds. Every process simulates the same network
(random weights with the model's shapes, thresholds calibrated on the same inputs, v0 = θ/2) on the same inputs and
saves its outputs; they are compared with the default configuration's (a configuration that changes a single spike
count says so). ``--accuracy_run`` adds a committed checkpoint on real test images: how many answers change.

The configurations are XLA:CPU's own switches for its kernels: oneDNN thunks for the contractions (the library
PyTorch's CPU convolutions run on), XNNPACK off / its fusions / its graph fusion, YNNPACK fusions, 512-bit vectors
(this CPU has AVX-512) and the fast-runtime optimisation preset. Time it on an idle machine; it writes
``--out`` (JSON) and prints a markdown table for ``benchmarks/RESULTS.md``.
"""
import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {
    "default": "",
    "oneDNN contractions": "--xla_cpu_use_onednn=true",
    "oneDNN custom calls": "--xla_cpu_experimental_onednn_custom_call=true",
    "oneDNN contractions + eltwise fusion": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot,eltwise",
    "XNNPACK off": "--xla_cpu_use_xnnpack=false",
    "XNNPACK fusions": "--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce",
    "XNNPACK graph fusion": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "YNNPACK fusions": "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce",
    "YNNPACK dot": "--xla_cpu_experimental_ynn_fusion_type=dot",
    "YNNPACK eltwise": "--xla_cpu_experimental_ynn_fusion_type=eltwise",
    "YNNPACK reduce": "--xla_cpu_experimental_ynn_fusion_type=reduce",
    "512-bit vectors": "--xla_cpu_prefer_vector_width=512",
    "fast-runtime preset": "--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME",
}


def worker(args):
  """One configuration (XLA_FLAGS already set by the parent): times, and the outputs saved for the comparison."""
  import jax
  import numpy as np

  import jaxsnn
  from scaling import random_setup
  from timing import timed

  apply_fn, variables, x, snn = random_setup(args.model, args.batch)
  ann = jax.jit(apply_fn)
  sim = jax.jit(lambda s, x: jaxsnn.simulate(s, x, args.num_steps).outputs)
  ann_first, ann_s = timed(lambda: ann(variables, x), args.repeats)
  sim_first, sim_s = timed(lambda: sim(snn, x), args.repeats)
  saved = {"outputs": np.asarray(sim(snn, x)), "logits": np.asarray(ann(variables, x))}
  if args.accuracy_run:
    saved.update(real_data_predictions(args))
  jaxsnn.files.write_npz(args.save, saved)  # a plain .npz (atomic) for the parent to compare
  print(json.dumps({"ann_s": ann_s, "sim_s": sim_s, "ann_first_s": ann_first, "sim_first_s": sim_first}))


def real_data_predictions(args):
  """A committed checkpoint's SNN (SNM + NeuronNorm from 1,000 training images, v0 = θ/2) on the first
  ``--accuracy_images`` test images: the class it answers after every t, and the labels."""
  import jax
  import numpy as np

  import jaxsnn
  from jaxsnn import data, training

  config, model, variables = training.load_trained(ROOT / "experiments/checkpoints" / args.accuracy_run)
  spec = data.spec(config.dataset)
  apply_fn = lambda v, x: model.apply(v, x, train=False)  # noqa: E731
  train = data.load(config.dataset, "train[:1000]")
  test = data.load(config.dataset, f"{spec.test_split}[:{args.accuracy_images}]")
  snn, _ = jaxsnn.recipes.paper(apply_fn, variables,
                                data.batches(train, 200, train=False, mean=spec.mean, std=spec.std),
                                initial_potential=0.5, check_examples=0)
  sim = jax.jit(lambda s, x: jaxsnn.simulate(s, x, args.accuracy_num_steps, tallies=False).outputs.argmax(-1))
  preds, labels = [], []
  for b in data.batches(test, 200, train=False, mean=spec.mean, std=spec.std):
    preds.append(np.asarray(sim(snn, b["image"]))[:, b["mask"]])
    labels.append(b["label"][b["mask"]])
  return {"predictions": np.concatenate(preds, axis=1), "labels": np.concatenate(labels)}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="resnet20", choices=("small_cnn", "resnet20", "vgg16_w025"))
  parser.add_argument("--num_steps", "--steps", dest="num_steps", type=int, default=16,
                      help="time steps T (--steps: the old spelling)")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5, help="timed calls per process (median)")
  parser.add_argument("--rounds", type=int, default=2,
                      help="processes per configuration, in rotated orders; the table gives the medians")
  parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names of CONFIGS")
  parser.add_argument("--out", default=None, help="JSON (default benchmarks/results/xla_flags_<model>.json)")
  parser.add_argument("--accuracy_run", default=None,
                      help="also simulate this committed checkpoint (e.g. cifar10_resnet20) on real test images and "
                           "compare each configuration's answers with the default's")
  parser.add_argument("--accuracy_images", type=int, default=1000)
  parser.add_argument("--accuracy_num_steps", "--accuracy_steps", dest="accuracy_num_steps", type=int, default=64,
                      help="T of the accuracy check (--accuracy_steps: the old spelling)")
  parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--save", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker is not None:
    return worker(args)

  import numpy as np

  from timing import write_json

  names = [n.strip() for n in args.configs.split(",") if n.strip()]
  unknown = [n for n in names if n not in CONFIGS]
  if unknown:
    sys.exit(f"xla_flags.py: unknown configurations {unknown}; choose from: {', '.join(CONFIGS)}")
  if "default" not in names:
    names.insert(0, "default")
  out = {"model": args.model, "steps": args.num_steps, "batch": args.batch, "machine": platform.processor() or
         platform.machine(), "inherited_XLA_FLAGS": os.environ.get("XLA_FLAGS", ""), "configs": {}}
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(args.rounds):
      # Later rounds visit the configurations in a rotated order (the machine drifts; no one is always first).
      order = names if r == 0 else names[r % len(names):] + names[:r % len(names)]
      for name in order:
        if "error" in out["configs"].get(name, {}):
          continue
        save = os.path.join(tmp, f"{name.replace(' ', '_')}_{r}.npz")
        env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {CONFIGS[name]}".strip(),
                   TF_CPP_MIN_LOG_LEVEL="2")
        cmd = [sys.executable, __file__, "--worker", name, "--save", save, "--model", args.model, "--num_steps",
               str(args.num_steps), "--batch", str(args.batch), "--repeats", str(args.repeats)]
        if args.accuracy_run and r == 0:
          cmd += ["--accuracy_run", args.accuracy_run, "--accuracy_images", str(args.accuracy_images),
                  "--accuracy_num_steps", str(args.accuracy_num_steps)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
          tail = proc.stderr.strip().splitlines()[-3:]
          print(f"{name}: failed ({CONFIGS[name]}): {' | '.join(tail)}", flush=True)
          out["configs"][name] = {"flags": CONFIGS[name], "error": " | ".join(tail)}
          continue
        times = json.loads(proc.stdout.strip().splitlines()[-1])
        if r > 0:
          row = out["configs"][name]
          for key in ("ann_s", "sim_s"):
            row["rounds"][key].append(times[key])
            row[key] = statistics.median(row["rounds"][key])
        else:
          row = dict(times, rounds={"ann_s": [times["ann_s"]], "sim_s": [times["sim_s"]]})
          got = np.load(save)
          if name == "default":
            ref = {k: got[k] for k in got.files}
          row["flags"] = CONFIGS[name]
          row["outputs_equal"] = bool(np.array_equal(got["outputs"], ref["outputs"]))
          row["outputs_max_abs_diff"] = float(np.max(np.abs(got["outputs"] - ref["outputs"])))
          row["logits_max_abs_diff"] = float(np.max(np.abs(got["logits"] - ref["logits"])))
          if args.accuracy_run:
            correct = got["predictions"] == got["labels"][None]
            checked = [t for t in (8, 16, 32, 64, 128, 256) if t <= args.accuracy_num_steps]
            row["real_data"] = {
                "run": args.accuracy_run, "images": int(correct.shape[1]),
                "accuracy": {str(t): float(correct[t - 1].mean()) for t in checked},
                "answers_differing_from_default": {
                    str(t): int((got["predictions"][t - 1] != ref["predictions"][t - 1]).sum()) for t in checked}}
          out["configs"][name] = row
        row["img_steps_per_s"] = args.batch * args.num_steps / row["sim_s"]
        row["sim_over_T_ann"] = row["sim_s"] / (args.num_steps * row["ann_s"])
        print(f"round {r + 1}, {name}: ANN {times['ann_s'] * 1e3:.1f} ms, SNN "
              f"{args.batch * args.num_steps / times['sim_s']:.0f} images·steps/s, "
              f"outputs equal: {row['outputs_equal']} "
              f"(max diff {row['outputs_max_abs_diff']:.2g})" + (f"; real data: {row['real_data']}" if
                                                                args.accuracy_run and r == 0 else ""), flush=True)
  if "error" in out["configs"]["default"]:
    sys.exit("xla_flags.py: the default configuration failed (above); nothing to compare with.")
  path = args.out or str(ROOT / f"benchmarks/results/xla_flags_{args.model}.json")
  write_json(path, out)
  base = out["configs"]["default"]
  print(f"\nmedian of {args.rounds} processes per configuration, each the median of {args.repeats} calls")
  print("\n| configuration | XLA_FLAGS | ANN pass ms | images·steps/s | vs default | SNN / (T ANN passes) | "
        "SNN outputs |\n|---|---|---|---|---|---|---|")
  for name, row in out["configs"].items():
    if "error" in row:
      print(f"| {name} | `{row['flags']}` | failed: {row['error'][:80]} | | | | |")
      continue
    same = "identical" if row["outputs_equal"] else f"differ (max {row['outputs_max_abs_diff']:.2g})"
    print(f"| {name} | `{row['flags'] or '(none)'}` | {row['ann_s'] * 1e3:.1f} | {row['img_steps_per_s']:.0f} | "
          f"{base['sim_s'] / row['sim_s']:.2f}× | {row['sim_over_T_ann']:.2f} | {same} |")
  if args.accuracy_run:
    checked = list(base["real_data"]["accuracy"])
    print(f"\n{args.accuracy_run}, first {base['real_data']['images']} test images, SNM + NeuronNorm, v0 = θ/2: "
          f"accuracy % (answers that differ from the default configuration's)\n")
    print("| configuration | " + " | ".join(f"T = {t}" for t in checked) + " |\n|---|" + "---|" * len(checked))
    for name, row in out["configs"].items():
      if "real_data" in row:
        r = row["real_data"]
        print(f"| {name} | " + " | ".join(f"{100 * r['accuracy'][t]:.2f} ({r['answers_differing_from_default'][t]})"
                                          for t in checked) + " |")
  print(f"\nwrote {path}")


if __name__ == "__main__":
  main()
