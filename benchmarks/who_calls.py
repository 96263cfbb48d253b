"""Speed whoever calls: ``jaxsnn.simulate`` as a notebook user gets it (plain ``import jaxsnn``, no flag, nothing set
before JAX starts), as the scripts of experiments/ and benchmarks/ get it (``jaxsnn.xla.use_fast_cpu_kernels()``
first), and with XLA's own kernels (``JAXSNN_FAST_CPU=0``, the opt-out).

    python benchmarks/who_calls.py [--num_steps 64] [--batch 128] [--repeats 3] [--rounds 2]

Each setting runs in a fresh process (XLA reads its flags once per process): the committed CIFAR-10 ResNet-20
converted by the paper's recipe (thresholds from 512 training images), the first ``--batch`` test images, one
``jaxsnn.simulate(snn, x, num_steps)`` call to compile, then the median of ``--repeats`` calls, each waited for with
``block_until_ready``. The settings take turns (ABCABC..., ``--rounds`` rounds, so a change in the machine's load
hits all of them alike); each setting's speed is the best round's median, in images·steps per second. The spike
outputs of the three are compared too: the user's and the scripts' must be bit-identical (the same kernels through
jaxsnn's own compiler options); XLA's own kernels may round differently.

Writes ``benchmarks/results/who_calls.json``.
"""
import argparse
import hashlib
import json
import os
import pathlib
import platform
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = {
    "library user (import jaxsnn, nothing set)": {"env": {}, "use_fast_cpu_kernels": False},
    "scripts (jaxsnn.xla.use_fast_cpu_kernels() first)": {"env": {}, "use_fast_cpu_kernels": True},
    "XLA's own kernels (JAXSNN_FAST_CPU=0)": {"env": {"JAXSNN_FAST_CPU": "0"}, "use_fast_cpu_kernels": False},
}
CHECKPOINT = "experiments/checkpoints/cifar10_resnet20"
CALIBRATION_IMAGES = 512


def worker(args) -> None:
  """One setting in this process: prints one JSON line ``{"first_s", "median_s", "outputs_sha256"}``."""
  if args.use_fast_cpu_kernels:
    import jaxsnn.xla
    jaxsnn.xla.use_fast_cpu_kernels()
  import jax
  import jax.numpy as jnp
  import numpy as np

  import jaxsnn
  from jaxsnn import data, training
  from timing import timed

  config, model, variables = training.load_trained(ROOT / CHECKPOINT)
  spec = data.spec(config.dataset)
  prepare = lambda a: jnp.asarray(data.normalize(a.images, spec.mean, spec.std))  # noqa: E731
  train = prepare(data.load(config.dataset, f"train[:{CALIBRATION_IMAGES}]"))
  x = prepare(data.load(config.dataset, f"{spec.test_split}[:{args.batch}]"))
  snn, _ = jaxsnn.recipes.paper(lambda v, x: model.apply(v, x, train=False), variables, [train], check_examples=0)
  run = lambda: jaxsnn.simulate(snn, x, args.num_steps).outputs  # noqa: E731  (what a notebook cell does)
  first, median = timed(run, args.repeats)
  digest = hashlib.sha256(np.asarray(run()).tobytes()).hexdigest()
  print(json.dumps({"first_s": first, "median_s": median, "outputs_sha256": digest}), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num_steps", type=int, default=64)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--out", default=str(ROOT / "benchmarks/results/who_calls.json"))
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--use_fast_cpu_kernels", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    return worker(args)

  from timing import write_json
  runs = {name: [] for name in SETTINGS}
  for r in range(args.rounds):
    for name, setting in SETTINGS.items():
      env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXSNN_FAST_CPU")}
      env.update(setting["env"])
      cmd = [sys.executable, __file__, "--worker", "--num_steps", str(args.num_steps), "--batch", str(args.batch),
             "--repeats", str(args.repeats)] + (["--use_fast_cpu_kernels"] if setting["use_fast_cpu_kernels"] else [])
      done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
      if done.returncode:
        raise SystemExit(f"{name}: the worker failed:\n{done.stderr[-3000:]}")
      result = json.loads(done.stdout.strip().splitlines()[-1])
      result["load_average"] = os.getloadavg()
      runs[name].append(result)
      print(f"round {r + 1}, {name}: {args.batch * args.num_steps / result['median_s']:.0f} images·steps/s "
            f"(median {result['median_s']:.2f} s, first call {result['first_s']:.1f} s)", flush=True)
  best = {name: min(r["median_s"] for r in rs) for name, rs in runs.items()}
  rate = {name: args.batch * args.num_steps / s for name, s in best.items()}
  user, scripts, own = SETTINGS
  digests = {name: {r["outputs_sha256"] for r in rs} for name, rs in runs.items()}
  report = {
      "what": "jaxsnn.simulate speed by who calls it: CIFAR-10 ResNet-20 (paper recipe), one batch",
      "checkpoint": CHECKPOINT, "num_steps": args.num_steps, "batch": args.batch, "repeats": args.repeats,
      "rounds": args.rounds, "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
      "runs": runs, "best_median_s": best, "images_steps_per_s": rate,
      "user_over_scripts": rate[user] / rate[scripts], "own_kernels_over_scripts": rate[own] / rate[scripts],
      "user_equals_scripts_bit_for_bit": len(digests[user] | digests[scripts]) == 1,
  }
  write_json(args.out, report)
  print(f"library user / scripts: {report['user_over_scripts']:.3f}; XLA's own / scripts: "
        f"{report['own_kernels_over_scripts']:.3f}; user == scripts bit for bit: "
        f"{report['user_equals_scripts_bit_for_bit']}; wrote {args.out}")


if __name__ == "__main__":
  main()
