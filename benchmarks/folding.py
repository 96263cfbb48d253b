"""What folding the constant affine chains (bias, eval-mode BatchNorm) into the spiking contractions buys per step.

    python benchmarks/folding.py [--models resnet20,vgg16_w025] [--num_steps 64] [--batch 128]

For each model (random weights with its shapes, BatchNorm statistics randomised so that no scale is 1, thresholds
calibrated on the same inputs, v0 = θ/2): ``jaxsnn.convert(..., fold=False)`` and ``fold=True`` (the default), the
step-major simulation of ``--num_steps`` steps on one batch, compiled first; then the two alternate for ``--repeats``
rounds and the median of each is kept. Also: the ANN pass, the number of ops the per-step program runs (the jaxpr
of the time loop's body) and how far the two readouts are apart (float rounding only). Time it on an idle machine;
writes ``--out`` (JSON) and prints a markdown table for ``benchmarks/RESULTS.md``.
"""
import argparse
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxsnn  # noqa: E402
from scaling import SHAPES  # noqa: E402
from timing import write_json  # noqa: E402


def randomise_batch_stats(variables, seed):
  """Eval-mode BatchNorm with scales and shifts that are not the identity (a trained net's are not)."""
  rng = np.random.default_rng(seed)

  def visit(tree, path=()):
    if isinstance(tree, dict):
      return {k: visit(v, path + (k,)) for k, v in tree.items()}
    if path[-1] == "mean":
      return jnp.asarray(rng.normal(0, 0.5, tree.shape), tree.dtype)
    if path[-1] == "var":
      return jnp.asarray(rng.uniform(0.5, 2.0, tree.shape), tree.dtype)
    return tree

  return {**variables, "batch_stats": visit(dict(variables["batch_stats"]))}


def body_ops(snn, x, steps):
  """Ops in the time loop's body (the per-step program), nested jaxprs included."""
  closed = jax.make_jaxpr(lambda s, x: jaxsnn.simulate(s, x, steps).outputs)(snn, x)
  counts = []

  def size(jaxpr):
    n = 0
    for eqn in jaxpr.eqns:
      n += 1
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        n += size(sub)
    return n

  def visit(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "scan":
        counts.append(size(eqn.params["jaxpr"].jaxpr))
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        visit(sub)

  visit(closed.jaxpr)
  return max(counts)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", default="resnet20,vgg16_w025")
  parser.add_argument("--num_steps", "--steps", dest="num_steps", type=int, default=64,
                      help="time steps T (--steps: the old spelling)")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default=str(ROOT / "benchmarks/results/folding.json"))
  args = parser.parse_args()
  out = {"steps": args.num_steps, "batch": args.batch, "jax": jax.__version__, "models": {}}
  for name in args.models.split(","):
    shape, make = SHAPES[name]
    model = make(num_classes=10)
    x = jax.random.normal(jax.random.key(0), (args.batch,) + shape)
    variables = randomise_batch_stats(model.init(jax.random.key(1), x[:1], train=False), 2)
    apply_fn = lambda v, x, model=model: model.apply(v, x, train=False)  # noqa: E731
    th = jaxsnn.thresholds(jaxsnn.calibrate(apply_fn, variables, [x]))
    snns = {fold: jaxsnn.convert(apply_fn, variables, x[:1], th, initial_potential=0.5, fold=fold)
            for fold in (False, True)}
    sim = jax.jit(lambda s, x: jaxsnn.simulate(s, x, args.num_steps).outputs)
    ann = jax.jit(apply_fn)
    outputs = {fold: np.asarray(jax.block_until_ready(sim(snn, x))) for fold, snn in snns.items()}  # compiles
    jax.block_until_ready(ann(variables, x))
    times = {False: [], True: [], "ann": []}
    for _ in range(args.repeats):
      for key in (False, True, "ann"):
        t0 = time.perf_counter()
        jax.block_until_ready(ann(variables, x) if key == "ann" else sim(snns[key], x))
        times[key].append(time.perf_counter() - t0)
    ann_s = statistics.median(times["ann"])
    row = {"ann_s": ann_s, "readout_max_abs_diff": float(np.max(np.abs(outputs[True] - outputs[False])))}
    for fold in (False, True):
      s = statistics.median(times[fold])
      row["folded" if fold else "unfolded"] = {
          "sim_s": s, "times": times[fold], "img_steps_per_s": args.batch * args.num_steps / s,
          "sim_over_T_ann": s / (args.num_steps * ann_s), "ops_per_step": body_ops(snns[fold], x, args.num_steps)}
    out["models"][name] = row
    print(f"{name}: unfolded {row['unfolded']['img_steps_per_s']:.0f}, folded {row['folded']['img_steps_per_s']:.0f} "
          f"images·steps/s; ops per step {row['unfolded']['ops_per_step']} -> {row['folded']['ops_per_step']}; "
          f"readouts differ by {row['readout_max_abs_diff']:.2g}", flush=True)
  write_json(args.out, out)
  print("\n| model | program | ops per step | images·steps/s | vs unfolded | SNN / (T ANN passes) |\n|---|---|---|---|---|---|")
  for name, row in out["models"].items():
    for key in ("unfolded", "folded"):
      r = row[key]
      print(f"| {name} | {key} | {r['ops_per_step']} | {r['img_steps_per_s']:.0f} | "
            f"{row['unfolded']['sim_s'] / r['sim_s']:.2f}× | {r['sim_over_T_ann']:.2f} |")
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
