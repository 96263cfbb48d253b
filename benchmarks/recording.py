"""What recording costs: ``simulate`` without ``record``, with every site's spikes, and with spikes and membrane
potentials, on the committed Fashion-MNIST SmallCNN and CIFAR-10 ResNet-20.

    python benchmarks/recording.py [--num_steps 32] [--batch 16] [--repeats 15] [--compare_with REV]

Each network is converted by the paper's recipe (thresholds from 512 training images) and simulated on the first
``--batch`` test images. Every variant is compiled first; then the variants are timed in turn, one call each per round
(ABCABC..., so a change in the machine's load hits all of them alike), ``--repeats`` rounds, each call waited for
with ``block_until_ready``. Reports the median seconds per variant, the ratios to the run without ``record``, and the
load average while it ran (other jobs share the machine).

A run that records nothing should cost what it cost before recording existed. ``--compare_with REV`` checks that it is
the same program: it lowers the no-record simulation with this checkout's jaxsnn and with the jaxsnn of git revision
REV (a temporary ``git worktree``) and compares the StableHLO text.

Writes ``benchmarks/results/recording.json``.
"""
import argparse
import hashlib
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
JAXSNN_FROM = os.environ.get("JAXSNN_FROM")  # the --compare_with subprocess: jaxsnn of another checkout
sys.path.insert(0, JAXSNN_FROM or str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import jaxsnn  # noqa: E402
from jaxsnn import data, training  # noqa: E402
from timing import write_json  # noqa: E402

NETS = {"fashion_mnist_small_cnn": "experiments/checkpoints/fashion_mnist_small_cnn",
        "cifar10_resnet20": "experiments/checkpoints/cifar10_resnet20"}
CALIBRATION_IMAGES = 512


def network(name: str, batch: int):
  """``(snn, x)``: the committed checkpoint converted by the paper's recipe, and the first test images."""
  config, model, variables = training.load_trained(ROOT / NETS[name])
  spec = data.spec(config.dataset)
  prepare = lambda a: jnp.asarray(data.normalize(a.images, spec.mean, spec.std))  # noqa: E731
  train = prepare(data.load(config.dataset, f"train[:{CALIBRATION_IMAGES}]"))
  x = prepare(data.load(config.dataset, f"{spec.test_split}[:{batch}]"))
  snn, _ = jaxsnn.recipes.paper(lambda v, x: model.apply(v, x, train=False), variables, [train])
  return snn, x


def no_record_hlo(snn, x, steps: int) -> str:
  """The sha256 of the StableHLO of the simulation without ``record`` (public API only: any jaxsnn version)."""
  text = jax.jit(lambda x: jaxsnn.simulate(snn, x, steps).outputs).lower(x).as_text()
  return hashlib.sha256(text.encode()).hexdigest()


def baseline_hlo(rev: str, args) -> dict:
  """``{net: sha256}`` of the no-record program with jaxsnn at git revision ``rev``."""
  with tempfile.TemporaryDirectory() as tmp:
    tree = pathlib.Path(tmp) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev], check=True,
                   capture_output=True)
    try:
      out = subprocess.run([sys.executable, __file__, "--hlo_only", "--num_steps", str(args.num_steps), "--batch",
                            str(args.batch)], env=dict(os.environ, JAXSNN_FROM=str(tree)), check=True,
                           capture_output=True, text=True)
    finally:
      subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num_steps", "--steps", dest="num_steps", type=int, default=32,
                      help="time steps T (--steps: the old spelling)")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=15)
  parser.add_argument("--nets", default=",".join(NETS))
  parser.add_argument("--compare_with", default=None, help="a git revision whose no-record program to compare")
  parser.add_argument("--hlo_only", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--out", default=str(ROOT / "benchmarks/results/recording.json"))
  args = parser.parse_args()
  nets = {name: network(name, args.batch) for name in args.nets.split(",")}
  hlo = {name: no_record_hlo(snn, x, args.num_steps) for name, (snn, x) in nets.items()}
  if args.hlo_only:
    print(json.dumps(hlo))
    return
  baseline = baseline_hlo(args.compare_with, args) if args.compare_with else None

  result = {"command": "python benchmarks/recording.py " + " ".join(sys.argv[1:]), "steps": args.num_steps,
            "batch": args.batch, "repeats": args.repeats, "platform": jax.devices()[0].platform,
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "jax": jax.__version__,
            "date": time.strftime("%Y-%m-%d"), "nets": {}}
  for name, (snn, x) in nets.items():
    sites = list(snn.site_names)
    variants = {
        "no record": lambda snn=snn, x=x: jaxsnn.simulate(snn, x, args.num_steps).outputs,
        "spikes of every site": lambda snn=snn, x=x, sites=sites: jaxsnn.simulate(snn, x, args.num_steps, record=sites),
        "spikes and potentials of every site": lambda snn=snn, x=x, sites=sites: jaxsnn.simulate(
            snn, x, args.num_steps, record=sites, record_potentials=True),
    }
    for fn in variants.values():  # compile (and warm) every variant first
      jax.block_until_ready(fn())
    times = {v: [] for v in variants}
    load = [os.getloadavg()[0]]
    for _ in range(args.repeats):
      for v, fn in variants.items():  # interleaved: A B C A B C ...
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times[v].append(time.perf_counter() - t0)
      load.append(os.getloadavg()[0])
    median = {v: statistics.median(t) for v, t in times.items()}
    neurons = sum(int(jnp.size(snn.thresholds[s])) for s in sites)
    entry = {"sites": len(sites), "neurons_per_sample": neurons,
             "recorded_bytes": {"spikes": neurons * args.batch * args.num_steps,
                                "potentials": neurons * args.batch * args.num_steps * 4},
             "median_seconds": median, "seconds": times,
             "ratio_to_no_record": {v: median[v] / median["no record"] for v in variants},
             "load_average_1min": {"min": min(load), "median": statistics.median(load), "max": max(load)},
             "no_record_hlo_sha256": hlo[name]}
    if baseline is not None:
      entry["baseline"] = {"rev": args.compare_with, "no_record_hlo_sha256": baseline[name],
                           "same_program": baseline[name] == hlo[name]}
    result["nets"][name] = entry
    print(f"{name}: {len(sites)} sites, {neurons:,} neurons per sample, T = {args.num_steps}, batch {args.batch}; "
          f"load average {statistics.median(load):.1f} ({min(load):.1f}..{max(load):.1f})")
    for v in variants:
      print(f"  {v:<38} {median[v]:8.3f} s  {entry['ratio_to_no_record'][v]:6.3f}x")
    if baseline is not None:
      print(f"  no-record program same as at {args.compare_with}: {entry['baseline']['same_program']}")
  write_json(args.out, result)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
