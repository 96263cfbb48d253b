"""jaxsnn's simulation schedules on an accelerator: VGG16 and ResNet-18 (full width), CIFAR-10 input, batch 256.

    python benchmarks/gpu.py              # on a GPU / TPU machine: about 5 min on one H200, compiles included
    python benchmarks/gpu.py --smoke      # tiny sizes on any machine (CPU too): checks that the script runs

Random weights (speed does not depend on training); thresholds calibrated on the same random inputs, so that neurons
fire at realistic rates. For each T in ``--num_steps``, model and schedule (step-major; layer-major with K in
``--blocks``, ``exact=True`` and ``exact=False``): the first call (compile + run) is timed on its own, then the median
of ``--repeats`` calls with ``block_until_ready``; images*steps/s, the ratio to T passes of the same ANN (jit, same
batch) and the speed relative to step-major. Rows are ordered by priority (T = 64 first); a row that would start
after ``--time_budget`` seconds is skipped and marked so, and a row that fails (e.g. out of memory) records the error
and the run goes on. ``benchmarks/results/gpu.json`` is rewritten (atomically) after every row, so an interrupted run
keeps what it measured; the markdown table is printed at the end.
"""
import argparse
import os
import pathlib
import platform
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

import jaxsnn  # noqa: E402
from timing import timed, write_json  # noqa: E402
from jaxsnn import models  # noqa: E402

MODELS = {"vgg16": models.VGG16, "resnet18": models.ResNet18}
INPUT_SHAPE = (32, 32, 3)  # CIFAR-10
NUM_CLASSES = 10


def schedules(blocks):
  yield "step-major", None, True
  for k in blocks:
    for exact in (True, False):
      yield f"layer-major K={k}" + ("" if exact else ", exact=False"), k, exact


def _jaxlib_version() -> str:
  try:
    import jaxlib
    return jaxlib.__version__
  except (ImportError, AttributeError):
    return "unknown"


def device_info() -> dict:
  d = jax.devices()[0]
  return {"backend": jax.default_backend(), "device_kind": d.device_kind, "device_count": jax.device_count(),
          "jax": jax.__version__, "jaxlib": _jaxlib_version(),
          "jaxsnn": jaxsnn.__version__, "python": platform.python_version(), "host": platform.machine(),
          "cpu_count": os.cpu_count(), "matmul_precision": str(jax.config.jax_default_matmul_precision),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def render(rows: list) -> str:
  lines = ["| model | T | schedule | compile+first s | median s | images·steps/s | vs T ANN passes | vs step-major |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    if "error" in r or "skipped" in r:
      lines.append(f"| {r['model']} | {r['T']} | {r['schedule']} | {r.get('error') or r.get('skipped')} |"
                   " | | | |")
      continue
    lines.append(f"| {r['model']} | {r['T']} | {r['schedule']} | {r['first_s']:.1f} | {r['median_s']:.4f} | "
                 f"{r['img_steps_per_s']:,.0f} | {r['ratio_to_T_ann_passes']:.2f}× | "
                 f"{r.get('speedup_vs_step_major', float('nan')):.2f}× |")
  return "\n".join(lines)



def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", default="vgg16,resnet18", help="comma-separated: " + ", ".join(MODELS))
  parser.add_argument("--width", type=float, default=1.0)
  parser.add_argument("--num_steps", "--steps", dest="num_steps", default="64,32",
                      help="T values, in order of priority (--steps: the old spelling)")
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--blocks", default="8,16", help="layer-major block sizes K")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--time_budget", type=float, default=270.0, help="seconds after which no new row starts")
  parser.add_argument("--smoke", action="store_true", help="tiny sizes (width 1/16, batch 4, T = 8, K = 4)")
  parser.add_argument("--out", default=str(ROOT / "benchmarks/results/gpu.json"))
  args = parser.parse_args()
  if args.smoke:
    args.width, args.batch, args.num_steps, args.blocks, args.repeats = 1 / 16, 4, "8", "4", 1
    if args.out == str(ROOT / "benchmarks/results/gpu.json"):
      args.out = str(ROOT / "data_cache/gpu_smoke.json")
  names = args.models.split(",")
  unknown = [n for n in names if n not in MODELS]
  if unknown:
    parser.error(f"--models: unknown {unknown}; choose from {list(MODELS)}")
  num_steps_grid = [int(t) for t in args.num_steps.split(",")]
  blocks = [int(k) for k in args.blocks.split(",")]
  out = pathlib.Path(args.out)
  start = time.perf_counter()
  report = {"device": device_info(), "batch": args.batch, "width": args.width, "input_shape": INPUT_SHAPE,
            "command": " ".join(sys.argv), "rows": []}
  dev = report["device"]
  print(f"{dev['device_kind']} ({dev['backend']}), jax {jax.__version__}, batch {args.batch}, width {args.width}",
        flush=True)

  nets = {}
  for name in names:
    model = MODELS[name](num_classes=NUM_CLASSES, width=args.width)
    apply_fn = lambda v, x, model=model: model.apply(v, x, train=False)  # noqa: E731
    x = jax.random.normal(jax.random.PRNGKey(0), (args.batch,) + INPUT_SHAPE)
    variables = model.init(jax.random.PRNGKey(1), x, train=False)
    stats = jaxsnn.calibrate(apply_fn, variables, [x])
    snn = jaxsnn.convert(apply_fn, variables, x, jaxsnn.thresholds(stats))
    ann = jax.jit(apply_fn)
    ann_first, ann_s = timed(lambda: ann(variables, x), max(args.repeats, 5))
    nets[name] = (snn, x, ann_s)
    report.setdefault("ann", {})[name] = {"first_s": ann_first, "median_s": ann_s, "images_per_s": args.batch / ann_s}
    print(f"{name}: ANN {args.batch / ann_s:,.0f} images/s (compile + first call {ann_first:.1f} s)", flush=True)

  for T in num_steps_grid:
    for name in names:
      snn, x, ann_s = nets[name]
      base = None
      for label, k, exact in schedules(blocks):
        row = {"model": name, "T": T, "schedule": label, "block_size": k, "exact": exact}
        report["rows"].append(row)
        if time.perf_counter() - start > args.time_budget:
          row["skipped"] = f"skipped: past the {args.time_budget:.0f} s budget"
          continue
        try:
          first, med = timed(lambda: jaxsnn.simulate(snn, x, T, block_size=k, exact=exact).outputs, args.repeats)
        except Exception as e:  # noqa: BLE001 (an out-of-memory row must not lose the others)
          row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
          print(f"{name} T={T} {label}: {row['error']}", flush=True)
          write_json(out, report)
          continue
        base = med if k is None else base
        row.update(first_s=first, median_s=med, img_steps_per_s=args.batch * T / med,
                   ratio_to_T_ann_passes=med / (T * ann_s))
        if base is not None:
          row["speedup_vs_step_major"] = base / med
        print(f"{name} T={T} {label}: {row['img_steps_per_s']:,.0f} images*steps/s, "
              f"{row['ratio_to_T_ann_passes']:.2f}x T ANN passes (first call {first:.1f} s)", flush=True)
        write_json(out, report)
  report["total_s"] = time.perf_counter() - start
  write_json(out, report)
  print(f"\nwrote {out} ({report['total_s']:.0f} s)\n")
  print(render(report["rows"]))


if __name__ == "__main__":
  main()
