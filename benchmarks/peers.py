"""jaxsnn against SpikingJelly on the same trained weights: per-step speed and time to accuracy on CIFAR-10.

    bash benchmarks/setup_peers.sh                     # once: SpikingJelly + torch (CPU) in benchmarks/.venv-peers
    python benchmarks/peers.py                         # both reference nets, full test set (~4 h on 2 cores; resumable)
    python benchmarks/peers.py --table                 # the markdown table of benchmarks/results/peers.json
    python benchmarks/peers.py --num_test 256 --max_T 64 --jaxsnn_max_T 64 --calib 1000 --select 128 \
        --out /tmp/peers.json                          # a quick check (~15 min)

Time it on an idle machine: with another process on the cores, torch's OpenMP threads wait on each other (its ANN
pass measured 4x slower with 2 threads than with 1 while a training job and another job shared the 2 cores).

For each committed CIFAR-10 checkpoint (ResNet-20, VGG16 width 0.25) the Flax variables are loaded into equivalent
torch modules (``benchmarks/_peers_torch.py``; the two ANNs' logits are compared on the first test images), then:

- **per-step speed**: images*steps/s of one batch (``--batch`` 128) over ``--timing_T`` 64 steps, and the same time
  divided by ``T`` passes of each library's own ANN (both compiled / warmed up first, median of ``--repeats``);
- **accuracy vs T**: one run to the largest T gives the accuracy after every t (readout summed over steps 1..t);
  time to accuracy = the smallest T whose accuracy is at least the Flax ANN's minus ``--drop`` (1 point), times the
  time per step, given as seconds for the 10,000 CIFAR-10 test images at that throughput.

jaxsnn's candidates (``JAXSNN_RECIPES``: the paper's method, and the low-latency recipe for T = 8, 16 and 32, each
one call of ``jaxsnn.recipes``) and SpikingJelly's are chosen the same way, on the same validation images: each is
first simulated on ``--select`` held-out validation images, and only the best there (smallest T reaching the
validation ANN's accuracy minus 1 point) runs on the test set; jaxsnn's up to ``--jaxsnn_max_T``. SpikingJelly 2.0's
converter runs its rate-coding recipes (layer-wise max, layer-wise 99.9 %,
the channel-wise robust norm with half-threshold neurons, local threshold balancing; the last two also with its
delayed readout): each is first simulated on ``--select`` held-out validation images (training split, never seen in
training), and only the best there (smallest T reaching the validation ANN's accuracy minus 1 point) runs on the
test set, up to ``--test_T_factor`` times that T (a power of two, at least 64, at most ``--max_T``; ``--select 0``:
all of ``--sj_recipes`` on the test set up to ``--max_T``). Thresholds come from the first ``--calib`` training
images for both libraries. SpikingJelly's delayed readout is its own ``estimate_delay_start`` rule, applied for every
T of the one run (for T below the estimated delay + 4, its rule reads the last 5 steps only).

Resumable: every accuracy run checkpoints into ``data_cache/peers/<net>/`` (jaxsnn's through
``jaxsnn.evaluate(checkpoint=...)``, SpikingJelly's after every batch) and a finished curve is only read back, so the
same command run again after a kill goes on where it stopped (a checkpoint of other weights, data or settings is
refused). The speeds are measured after both libraries' accuracy runs, back to back (the two timed minutes apart).

The torch side runs in its own venv as a subprocess (``benchmarks/.venv-peers``, made by
``benchmarks/setup_peers.sh``); weights and data pass through ``.npz`` files in ``data_cache/peers/``. Results are
merged per net into ``benchmarks/results/peers.json`` (written atomically after each net).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import time
from typing import Any, Callable, NamedTuple

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from timing import timed, write_json  # noqa: E402

PEERS_PYTHON = ROOT / "benchmarks/.venv-peers/bin/python"
TORCH_SIDE = ROOT / "benchmarks/_peers_torch.py"
CACHE = ROOT / "data_cache/peers"
DEFAULT_OUT = ROOT / "benchmarks/results/peers.json"
CHECKPOINTS = {"resnet20": "experiments/checkpoints/cifar10_resnet20",
               "vgg16_w025": "experiments/checkpoints/cifar10_vgg16_w025"}
SJ_RECIPES = ("max", "p99.9", "robust", "ltb")  # defined in _peers_torch.py
SJ_LABELS = {"max": "layer max", "p99.9": "layer 99.9 %", "robust": "channel 99.9 %, v0 = θ/2",
             "ltb": "local threshold balancing"}
TABLE_STEPS = (16, 32, 64)
TEST_IMAGES = 10_000  # CIFAR-10's test set: the unit of "time to accuracy"


# --- pure summaries (no jax, no torch: tested in tests/test_benchmarks_peers.py) ----------------------------------


def first_reaching(accuracy, target: float) -> int | None:
  """The smallest T (1-based) with ``accuracy[T - 1] >= target``, or None if no T reaches it."""
  for t, a in enumerate(accuracy, start=1):
    if a >= target - 1e-12:
      return t
  return None


def summarize(accuracy, target: float, img_steps_per_s: float | None, steps=TABLE_STEPS,
              images: int = TEST_IMAGES) -> dict:
  """Accuracy at the table's T, the T that reaches ``target`` and the wall time for ``images`` images at that T.

  Args:
    accuracy: accuracy after every t = 1..max_T.
    target: the accuracy to reach (ANN minus the allowed drop).
    img_steps_per_s: simulation throughput (images*steps/s) or None (no time then).
    steps: the T of the table columns (those beyond the run are left out).
    images: images the wall time is for.

  Returns:
    ``{"max_T", "acc_at": {T: acc}, "T_target", "time_to_target_s"}``; the last two None when not reached.
  """
  accuracy = [float(a) for a in accuracy]
  t_target = first_reaching(accuracy, target)
  time_s = None
  if t_target is not None and img_steps_per_s:
    time_s = images * t_target / img_steps_per_s
  return {"max_T": len(accuracy), "acc_at": {str(t): accuracy[t - 1] for t in steps if t <= len(accuracy)},
          "T_target": t_target, "time_to_target_s": time_s}


def test_steps(val_T_target: int | None, max_T: int, factor: float, floor: int = max(TABLE_STEPS)) -> int:
  """How far the test run goes after a validation run: ``factor`` x the T that reached the target there, rounded up
  to a power of two, at least ``floor`` (the table's columns) and at most ``max_T``; ``max_T`` when the validation
  run never reached the target or ``factor`` is 0."""
  if val_T_target is None or not factor:
    return max_T
  return min(max_T, max(floor, 2 ** math.ceil(math.log2(factor * val_T_target))))


def best_recipe(recipes: dict) -> str:
  """The recipe with the shortest time to target (else the smallest T to target, else the best final accuracy)."""
  def key(name):
    r = recipes[name]
    t = r.get("time_to_target_s")
    T = r.get("T_target")
    return (t if t is not None else math.inf, T if T is not None else math.inf, -r["accuracy"][-1])
  return min(recipes, key=key)


def _fmt_pct(a):
  return "–" if a is None else f"{100 * a:.2f}"


def _fmt_time(s):
  if s is None:
    return "not reached"
  return f"{s:,.0f} s" if s >= 100 else f"{s:.1f} s"


def render_table(results: dict) -> str:
  """Markdown tables (speed, then time to accuracy) of a peers.json object."""
  nets = [k for k in results if k != "meta"]
  T = {results[net].get("timing_T", 64) for net in nets}
  T = T.pop() if len(T) == 1 else "T"
  lines = [f"| net | library | recipe (setting) | images·steps/s | ANN images/s | SNN {T} steps / {T} ANN passes | "
           "vs SpikingJelly |", "|---|---|---|---|---|---|---|"]
  for net in nets:
    sj = results[net].get("spikingjelly", {})
    sj_ips = sj.get("img_steps_per_s")
    for lib in ("jaxsnn", "spikingjelly"):
      r = results[net].get(lib)
      if not r:
        continue
      batch = results[net].get("batch", 128)
      for name, rec in r["recipes"].items():
        if rec.get("img_steps_per_s") is None:
          continue
        rows = [(rec["label"], rec)]
        if rec.get("settings"):
          rows = [(f"{rec['label']} ({st['label']})", st) for st in rec["settings"].values()]
        for label, st in rows:
          ann_ips = batch / st["ann_pass_s"] if "ann_pass_s" in st else r["ann_images_per_s"]
          versus = f"{st['img_steps_per_s'] / sj_ips:.2f}×" if sj_ips and lib == "jaxsnn" else ""
          lines.append(f"| {net} | {lib} | {label} | {st['img_steps_per_s']:,.0f} | {ann_ips:,.0f} | "
                       f"{st['ratio_to_T_ann_passes']:.2f}× | {versus} |")
  steps = sorted({int(t) for net in nets for lib in ("jaxsnn", "spikingjelly")
                  for rec in results[net].get(lib, {}).get("recipes", {}).values() for t in rec["acc_at"]})
  head = "| net | library | recipe | ANN % | " + " | ".join(f"T={t}" for t in steps) + \
      " | T to ANN−1 | time to ANN−1 (10k images) |"
  lines += ["", head, "|" + "---|" * (6 + len(steps))]
  for net in nets:
    ann = results[net]["ann"]
    for lib in ("jaxsnn", "spikingjelly"):
      r = results[net].get(lib)
      if not r:
        continue
      ann_acc = ann["flax_test_accuracy"] if lib == "jaxsnn" else ann.get("torch_test_accuracy")
      for name, rec in r["recipes"].items():
        if "acc_at" not in rec:
          continue
        accs = " | ".join(_fmt_pct(rec["acc_at"].get(str(t))) for t in steps)
        T = rec["T_target"] if rec["T_target"] is not None else f"> {rec['max_T']}"
        mark = " **(best)**" if name == r.get("best") else ""
        lines.append(f"| {net} | {lib} | {rec['label']}{mark} | {_fmt_pct(ann_acc)} | {accs} | {T} | "
                     f"{_fmt_time(rec['time_to_target_s'])} |")
  flags = {results[net].get("jaxsnn", {}).get("xla_flags") for net in nets} - {None}
  if flags:
    lines += ["", "jaxsnn ran with XLA_FLAGS " + " / ".join(f"`{f}`" if f else "(XLA's defaults)" for f in
                                                        sorted(flags)) + "."]
  meta = results.get("meta", {})
  if meta:
    lines += ["", f"Machine: {meta.get('machine', '?')}; {meta.get('versions', '')}."]
  return "\n".join(lines)



# --- jaxsnn recipes -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A jaxsnn candidate: one call of :mod:`jaxsnn.recipes` (``low_latency_T`` None: the paper's method), or the
  network that ``experiments/fewsteps.py`` chose at ``few_steps_T`` (``recipes.few_steps``: hours of conversion-aware
  fine-tuning, so it is built there and saved, and read back here with :func:`jaxsnn.load`)."""
  label: str
  low_latency_T: int | None = None
  few_steps_T: int | None = None

  def saved(self, net: str) -> pathlib.Path:
    return ROOT / f"experiments/runs/fewsteps_cifar10_{net}/chosen_T{self.few_steps_T}.jaxsnn"

  def build(self, net: str, apply_fn, variables, train: list, stats, histograms):
    import jaxsnn
    if self.few_steps_T is not None:
      path = self.saved(net)
      if not path.exists():
        sys.exit(f"peers.py: {path.relative_to(ROOT)} is missing: save the few-steps networks with the command of "
                 f"experiments/results/fewsteps/cifar10_{net}.json plus --save_networks 4,8,16,32 (it rebuilds them "
                 "from its cache and checks them against its results), or leave the few_steps_T* candidates out "
                 "(--jaxsnn_recipes)")
      return jaxsnn.load(path)
    if self.low_latency_T is None:
      return jaxsnn.recipes.paper(apply_fn, variables, train, stats=stats, check_examples=0)[0]
    return jaxsnn.recipes.low_latency(apply_fn, variables, train, self.low_latency_T, stats=stats,
                                      histograms=histograms(), check_examples=0)[0]


# The candidates, chosen among on the validation images by the rule that chooses SpikingJelly's recipe.
JAXSNN_RECIPES = {"paper": Recipe("SNM + NeuronNorm (paper)")}
JAXSNN_RECIPES.update({f"low_latency_T{t}": Recipe(f"low-latency recipe for T = {t} (θ/2, T-aware θ, calibration, "
                                                   "delayed readout)", t) for t in (8, 16, 32)})
JAXSNN_RECIPES.update({f"few_steps_T{t}": Recipe(f"few-steps recipe (recipes.few_steps) as experiments/fewsteps.py "
                                                 f"chose it for T = {t} on its validation images", few_steps_T=t)
                       for t in (4, 8, 16, 32)})


def few_steps_preparation(net: str, T: int) -> dict:
  """Which network experiments/fewsteps.py chose at ``T`` and what it cost there: its quantisation (every session of
  it) plus the network's own stages (calibration, delay, fine-tuning), in seconds on that run's machine."""
  path = ROOT / f"experiments/results/fewsteps/cifar10_{net}.json"
  report = json.loads(path.read_text())
  name = report["selection"]["chosen"][str(T)]
  method = report["methods"][name]
  levels = method["method"]["levels"]
  quantize = sum(v for k, v in report["timings_seconds"].items() if k.startswith(f"quantize L={levels}"))
  return {"results": str(path.relative_to(ROOT)), "method": name, "seconds": round(quantize + method["prepare_seconds"], 1)}


# --- the run --------------------------------------------------------------------------------------------------------


def machine_info() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return f"{os.cpu_count()} CPU cores ({cpu}), {platform.system()} {platform.release()}"


def arch_of(model) -> dict:
  """The architecture ``_peers_torch.py`` rebuilds in torch, from a jaxsnn VGG or ResNet."""
  from flax import linen as nn
  from jaxsnn import models
  if model.act is not nn.relu:
    raise ValueError(f"peers: only ReLU networks compare with SpikingJelly's converter; got act={model.act!r}")
  common = {"in_channels": 3, "input_hw": 32, "num_classes": model.num_classes, "bn_eps": 1e-5}
  if isinstance(model, models.VGG):
    layers = []
    for spec in model.config:
      if spec == "P":
        layers.append("P")
        continue
      channels, kernel = (spec, 3) if isinstance(spec, int) else spec
      layers.append([models.scale_width(channels, model.width), kernel])
    return {"kind": "vgg", "layers": layers, "head": [models.scale_width(f, model.width) for f in model.head],
            **common}
  if isinstance(model, models.ResNet):
    return {"kind": "resnet", "stem": models.scale_width(model.stem_width, model.width),
            "stages": [[n, models.scale_width(w, model.width)] for n, w in zip(model.stage_sizes, model.stage_widths)],
            **common}
  raise ValueError(f"peers: no torch twin for {type(model).__name__}")


def run_torch(job: dict, name: str) -> dict:
  job_path, out_path = CACHE / f"{name}_job.json", CACHE / f"{name}_out.json"
  job_path.write_text(json.dumps(job))
  out_path.unlink(missing_ok=True)
  rc = subprocess.run([str(PEERS_PYTHON), str(TORCH_SIDE), str(job_path), str(out_path)], cwd=ROOT).returncode
  if rc:
    sys.exit(f"peers.py: the SpikingJelly side failed (exit {rc}, its output above); job: {job_path}")
  return json.loads(out_path.read_text())


class Net(NamedTuple):
  """One reference network and the data of a run (arrays normalized NHWC float32, as both libraries get them)."""
  name: str
  model: Any
  variables: Any
  apply_fn: Callable
  arrays: dict  # calib_x, test_x, test_y (+ val_x, val_y)
  weights_path: pathlib.Path
  data_path: pathlib.Path
  val_split: str | None
  fingerprint: str  # of the weights and every array: what a resumed accuracy run must share with the first one
  config: Any = None
  calib_batches: list = ()  # the calibration images as jaxsnn.data.batches of --batch (normalised like calib_x)


def load_net(net: str) -> "Net":
  """The committed checkpoint of ``net``: a :class:`Net` without data."""
  from jaxsnn import training
  config, model, variables = training.load_trained(ROOT / CHECKPOINTS[net])
  apply_fn = training.ModelApply(model, train=False)  # equal for equal models: compiled once
  return Net(net, model, variables, apply_fn, {}, pathlib.Path(), pathlib.Path(), None, "", config)


def prepare(net: str, args) -> Net:
  """Loads the checkpoint and the data, and writes the ``.npz`` files the torch side reads."""
  import jax
  from jaxsnn import data, files

  loaded = load_net(net)
  config, model, variables = loaded.config, loaded.model, loaded.variables
  spec = data.spec(config.dataset)
  if args.select > config.val_examples:
    sys.exit(f"peers.py: --select {args.select} is more than the {config.val_examples} validation images of {net}")
  norm = lambda images: data.normalize(images, spec.mean, spec.std)  # noqa: E731
  train = data.load(config.dataset, f"train[:{args.calib}]")
  test = data.load(config.dataset, spec.test_split)
  arrays = {"calib_x": norm(train.images), "test_x": norm(test.images[:args.num_test]),
            "test_y": test.labels[:args.num_test]}
  val_split = None
  if args.select:  # the first validation images: the training images the checkpoint never trained on
    cut = spec.train_examples - config.val_examples
    val_split = f"train[{cut}:{cut + args.select}]"
    val = data.load(config.dataset, val_split)
    arrays.update(val_x=norm(val.images), val_y=val.labels)
  CACHE.mkdir(parents=True, exist_ok=True)
  data_path, weights_path = CACHE / "data.npz", CACHE / f"{net}_weights.npz"
  # Plain .npz files (the torch side reads NumPy and nothing else), written atomically by jaxsnn.files.
  files.write_npz(data_path, arrays)
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]}
  apply_fn = loaded.apply_fn
  check_logits = np.asarray(jax.jit(apply_fn)(variables, arrays["test_x"][:args.check]))
  files.write_npz(weights_path, {"check_logits": check_logits, **flat})
  fingerprint = files.fingerprint(net, sorted(arrays), sorted(flat),
                                  arrays=[arrays[k] for k in sorted(arrays)] + [flat[k] for k in sorted(flat)])
  calib = list(data.batches(train, args.batch, train=False, mean=spec.mean, std=spec.std))
  return Net(net, model, variables, apply_fn, arrays, weights_path, data_path, val_split, fingerprint, config, calib)


def _curve_line(prefix: str, rec: dict, target: float) -> str:
  return (f"{prefix}: " + ", ".join(f"T={t}: {a:.4f}" for t, a in rec["acc_at"].items())
          + f"; reaches {target:.4f} at T = {rec['T_target']}")


def _progress_path(net: Net, name: str) -> pathlib.Path:
  return CACHE / net.name / f"{name}.npz"


def _jaxsnn_curve(net: Net, name: str, snn, x, y, max_T: int, args, split: str) -> list:
  """Accuracy after every t of one jaxsnn network on (x, y), resumable (data_cache/peers/<net>/)."""
  import jaxsnn
  from jaxsnn import files
  block = "" if args.jaxsnn_block is None else f"_K{args.jaxsnn_block}"
  if os.environ.get("XLA_FLAGS"):  # other kernels may round differently: a curve of its own
    block += "_x" + files.fingerprint(os.environ["XLA_FLAGS"])[:8]
  ckpt = _progress_path(net, f"jaxsnn_{name}_{split}_T{max_T}_n{len(y)}_b{args.batch}{block}")
  ckpt.parent.mkdir(parents=True, exist_ok=True)
  # One (x, y) batch: the runner cuts it into micro-batches of 128 (checkpoint_every counts those).
  res = jaxsnn.evaluate(snn, [(x, y)], max_T, block_size=args.jaxsnn_block, progress=True, checkpoint=ckpt,
                        checkpoint_every=2)
  return [float(v) for v in res.accuracy]


def jaxsnn_curves(net: Net, args) -> tuple[dict, dict]:
  """The Flax ANN's accuracy, jaxsnn's recipe chosen on the validation images by SpikingJelly's rule (the smallest
  T reaching the validation ANN's accuracy minus ``--drop``), and its accuracy after every t on the test set
  (resumable: each evaluation checkpoints into data_cache/peers/<net>/ and a finished one is only read back).

  Returns:
    (the "jaxsnn" entry of peers.json without speeds, {recipe: its SpikingNetwork} for the speed measurement).
  """
  import jax
  import jaxsnn
  from jaxsnn import training

  a = net.arrays
  ann_acc = training.ann_accuracy(net.apply_fn, net.variables, [(a["test_x"], a["test_y"])])
  print(f"Flax ANN: test accuracy {ann_acc:.4f} on {len(a['test_y'])} images", flush=True)
  train = net.calib_batches
  t0 = time.perf_counter()
  stats = jaxsnn.calibrate(net.apply_fn, net.variables, train)
  print(f"jaxsnn: calibrated on {stats.num_samples} training images in {time.perf_counter() - t0:.1f} s", flush=True)
  hist = {}

  def histograms():  # computed once, for every low-latency candidate
    if "h" not in hist:
      hist["h"] = jaxsnn.ratio_histograms(net.apply_fn, net.variables, train, stats)
    return hist["h"]

  out = {"ann_accuracy": ann_acc, "version": jaxsnn.__version__, "jax": jax.__version__,
         "xla_flags": os.environ.get("XLA_FLAGS", ""),
         "schedule": "step-major" if args.jaxsnn_block is None else f"layer-major K={args.jaxsnn_block}",
         "recipes": {}}
  built, candidates = {}, list(args.jaxsnn_recipes)

  def build(name):
    if name not in built:
      t0 = time.perf_counter()
      built[name] = (JAXSNN_RECIPES[name].build(net.name, net.apply_fn, net.variables, train, stats, histograms),
                     time.perf_counter() - t0)
    return built[name]

  if args.select:
    val_ann = training.ann_accuracy(net.apply_fn, net.variables, [(a["val_x"], a["val_y"])])
    val_target = val_ann - args.drop
    sel = {}
    for name in candidates:
      acc = _jaxsnn_curve(net, name, build(name)[0], a["val_x"], a["val_y"], args.jaxsnn_max_T, args, "val")
      sel[name] = {"label": JAXSNN_RECIPES[name].label, "accuracy": acc, **summarize(acc, val_target, None)}
      print(_curve_line(f"  jaxsnn validation {name}", sel[name], val_target), flush=True)
    chosen = best_recipe(sel)
    print(f"jaxsnn: best recipe on validation: {chosen}", flush=True)
    out["selection"] = {"split": net.val_split, "images": args.select, "ann_accuracy": val_ann,
                        "target_accuracy": val_target, "chosen": chosen,
                        "recipes": {k: {kk: vv for kk, vv in v.items() if kk != "accuracy"} for k, v in sel.items()}}
    candidates = [chosen]
  snns = {}
  for name in candidates:
    snn, build_s = build(name)
    snns[name] = snn
    print(f"jaxsnn {name}: built in {build_s:.1f} s; test set to T = {args.jaxsnn_max_T}", flush=True)
    acc = _jaxsnn_curve(net, name, snn, a["test_x"], a["test_y"], args.jaxsnn_max_T, args, "test")
    out["recipes"][name] = {"label": JAXSNN_RECIPES[name].label, "build_s": build_s,
                            "readout_delay": int(snn.readout_delay), "accuracy": acc}
    if JAXSNN_RECIPES[name].few_steps_T is not None:  # build_s is its loading; its making took hours
      out["recipes"][name]["preparation"] = few_steps_preparation(net.name, JAXSNN_RECIPES[name].few_steps_T)
  return out, snns


# jaxsnn's per-step speed under each setting, each in its own process (XLA reads its flags at start): the default
# (XLA:CPU's fast contraction kernels, jaxsnn.xla), XLA's own kernels (the opt-out), and the spike tallies that rates
# and energy need (an opt-in: accuracy runs carry none).
SPEED_SETTINGS = {
    "default": {"fast_cpu": True, "tallies": False},
    "xla_own_kernels": {"fast_cpu": False, "tallies": False},
    "with_tallies": {"fast_cpu": True, "tallies": True},
}
SETTING_LABELS = {"default": "jaxsnn's defaults (XLA:CPU fast contraction kernels, no tallies)",
                  "xla_own_kernels": "opt-out: XLA's own CPU kernels (JAXSNN_FAST_CPU=0)",
                  "with_tallies": "opt-in: per-neuron spike tallies (firing rates, energy)"}


def _worker_env(fast_cpu: bool) -> dict:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAXSNN_FAST_CPU"] = "1" if fast_cpu else "0"
  return env


def run_jaxsnn_worker(task: dict, name: str, fast_cpu: bool) -> dict:
  """Runs ``task`` in a fresh process of this script (``--jaxsnn_worker``), with or without the fast CPU kernels."""
  job_path, out_path = CACHE / f"{name}_jaxsnn_job.json", CACHE / f"{name}_jaxsnn_out.json"
  job_path.write_text(json.dumps(task))
  out_path.unlink(missing_ok=True)
  rc = subprocess.run([sys.executable, str(pathlib.Path(__file__).resolve()), "--jaxsnn_worker", str(job_path),
                       str(out_path)], cwd=ROOT, env=_worker_env(fast_cpu)).returncode
  if rc:
    sys.exit(f"peers.py: a jaxsnn worker failed (exit {rc}, its output above); job: {job_path}")
  return json.loads(out_path.read_text())


def jaxsnn_worker(job_path: str, out_path: str) -> None:
  """The ``--jaxsnn_worker`` process: ``speed`` (the Flax ANN pass and one recipe's SNN step) or ``curve`` (one
  recipe's accuracy after every t on the test set, resumable)."""
  import jax
  import jaxsnn
  task = json.loads(pathlib.Path(job_path).read_text())
  net = load_net(task["net"])
  with np.load(CACHE / "data.npz") as f:
    test_x, test_y = f["test_x"], f["test_y"]
  xb = test_x[:task["batch"]]
  snn = jaxsnn.load(task["snn"])  # the network as the parent built it (jaxsnn.save), program included
  out = {"xla_flags": os.environ.get("XLA_FLAGS", ""), "jax": jax.__version__}
  if task["kind"] == "speed":
    ann_fn = jax.jit(net.apply_fn)
    ann_s = timed(lambda: ann_fn(net.variables, xb), task["repeats"])[1]
    sim = jax.jit(lambda s, x: jaxsnn.simulate(s, x, task["T"], block_size=task["block"], tallies=task["tallies"]).outputs)
    sim_s = timed(lambda: sim(snn, xb), task["repeats"])[1]
    out.update(ann_pass_s=ann_s, snn_s=sim_s, img_steps_per_s=task["batch"] * task["T"] / sim_s,
               ratio_to_T_ann_passes=sim_s / (task["T"] * ann_s))
  else:
    ckpt = CACHE / task["net"] / f"jaxsnn_{task['recipe']}_test_T{task['T']}_n{len(test_y)}_b{task['batch']}_own.npz"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    res = jaxsnn.evaluate(snn, [(test_x, test_y)], task["T"], block_size=task["block"], progress=True,
                          checkpoint=ckpt, checkpoint_every=2)
    out["accuracy"] = [float(v) for v in res.accuracy]
  pathlib.Path(out_path).write_text(json.dumps(out))


def jaxsnn_own_kernels_curve(net: "Net", args, snns: dict, out: dict) -> None:
  """The chosen recipe's test curve again with XLA's own kernels (the opt-out): how far the fast kernels' rounding
  moves the answers (``out["recipes"][name]["accuracy_xla_own_kernels"]`` and the largest difference)."""
  import jaxsnn
  for name, snn in snns.items():
    path = CACHE / f"{net.name}_{name}_snn.jaxsnn"
    jaxsnn.save(path, snn)
    res = run_jaxsnn_worker({"kind": "curve", "net": net.name, "snn": str(path), "recipe": name,
                             "batch": args.batch, "T": args.jaxsnn_max_T, "block": args.jaxsnn_block},
                            net.name, fast_cpu=False)
    rec = out["recipes"][name]
    rec["accuracy_xla_own_kernels"] = res["accuracy"]
    rec["max_accuracy_difference_xla_own_kernels"] = max(abs(a - b) for a, b in zip(rec["accuracy"], res["accuracy"]))
    print(f"jaxsnn {name}: with XLA's own kernels the accuracy after every t differs by at most "
          f"{100 * rec['max_accuracy_difference_xla_own_kernels']:.2f} points", flush=True)


def jaxsnn_speed(net: "Net", args, snns: dict, out: dict) -> None:
  """Fills ``out`` (from :func:`jaxsnn_curves`) with the ANN pass time and each recipe's per-step speed under every
  setting of :data:`SPEED_SETTINGS`, each in a fresh process; the recipe's own numbers are the default's."""
  import jaxsnn
  for name, snn in snns.items():
    path = CACHE / f"{net.name}_{name}_snn.jaxsnn"
    jaxsnn.save(path, snn)
    rec = out["recipes"][name]
    rec["settings"] = {}
    for setting, opts in SPEED_SETTINGS.items():
      res = run_jaxsnn_worker({"kind": "speed", "net": net.name, "snn": str(path), "batch": args.batch,
                               "T": args.timing_T, "repeats": args.repeats, "block": args.jaxsnn_block,
                               "tallies": opts["tallies"]}, net.name, fast_cpu=opts["fast_cpu"])
      rec["settings"][setting] = dict(res, label=SETTING_LABELS[setting])
      print(f"jaxsnn {name} [{setting}]: {res['img_steps_per_s']:,.0f} images*steps/s, ANN "
            f"{args.batch / res['ann_pass_s']:,.0f} images/s, step = {res['ratio_to_T_ann_passes']:.2f} ANN passes",
            flush=True)
    default = rec["settings"]["default"]
    rec.update(snn_s=default["snn_s"], img_steps_per_s=default["img_steps_per_s"],
               ratio_to_T_ann_passes=default["ratio_to_T_ann_passes"])
    out.update(ann_pass_s=default["ann_pass_s"], ann_images_per_s=args.batch / default["ann_pass_s"])


def _variants(name: str, curves: dict):
  """(key, label, accuracy) of a SpikingJelly recipe's run: plain readout, and delayed readout where it has one."""
  yield name, SJ_LABELS[name], curves["accuracy"]
  if "accuracy_delayed" in curves:
    yield name + "+delay", SJ_LABELS[name] + ", delayed readout", curves["accuracy_delayed"]


def _torch_job(net: Net, args) -> dict:
  return {"arch": arch_of(net.model), "weights": str(net.weights_path), "data": str(net.data_path),
          "batch": args.batch, "repeats": args.repeats, "threads": args.threads, "fingerprint": net.fingerprint,
          "cache_dir": str(CACHE / net.name)}


def spikingjelly_curves(net: Net, args) -> tuple[dict, dict, list]:
  """The torch ANN check, SpikingJelly's recipe choice on validation images and its test run (each recipe's curve
  resumable: the torch side checkpoints it into data_cache/peers/<net>/ after every batch).

  Returns:
    (the torch ANN's numbers, the "spikingjelly" entry of peers.json without speeds, the recipes run on the test set).
  """
  job = _torch_job(net, args)
  tasks = [{"kind": "ann"}]
  if args.select:
    tasks.append({"kind": "curves", "split": "val", "recipes": list(args.sj_recipes), "max_T": args.max_T})
    print(f"SpikingJelly: ANN check, {len(args.sj_recipes)} recipes on {args.select} validation images to "
          f"T = {args.max_T}", flush=True)
  out1 = run_torch({**job, "tasks": tasks}, net.name)
  tann = out1["ann"]
  print(f"torch ANN: test accuracy {tann['test_accuracy']:.4f}; max |logit diff| vs Flax "
        f"{tann['logit_max_abs_diff']:.2e} ({tann['logit_max_rel_diff']:.1e} of the largest logit) on "
        f"{tann['logit_check_images']} test images; argmax agree {tann['argmax_agree']:.4f}", flush=True)
  sj = {"ann_accuracy": tann["test_accuracy"], **out1["versions"], "recipes": {}}
  candidates, test_T = list(args.sj_recipes), args.max_T
  if args.select:
    val_target = tann["val_accuracy"] - args.drop
    sel = {key: {"label": label, "accuracy": acc, **summarize(acc, val_target, None)}
           for name, c in out1["curves"]["val"].items() for key, label, acc in _variants(name, c)}
    for key, rec in sel.items():
      print(_curve_line(f"  validation {key}", rec, val_target), flush=True)
    chosen = best_recipe(sel)
    test_T = test_steps(sel[chosen]["T_target"], args.max_T, args.test_T_factor)
    print(f"SpikingJelly: best recipe on validation: {chosen}", flush=True)
    sj["selection"] = {"split": net.val_split, "images": args.select, "ann_accuracy": tann["val_accuracy"],
                       "target_accuracy": val_target, "chosen": chosen, "test_max_T": test_T,
                       "delay_start_raw": {k: c["delay_start_raw"] for k, c in out1["curves"]["val"].items()
                                           if "delay_start_raw" in c},
                       "recipes": {k: {kk: vv for kk, vv in v.items() if kk != "accuracy"} for k, v in sel.items()}}
    candidates = [chosen.split("+")[0]]
  print(f"SpikingJelly: {candidates} on {len(net.arrays['test_y'])} test images to T = {test_T}", flush=True)
  out2 = run_torch({**job, "tasks": [{"kind": "curves", "split": "test", "recipes": candidates, "max_T": test_T}]},
                   net.name)
  for name in candidates:
    c = out2["curves"]["test"][name]
    for key, label, acc in _variants(name, c):
      rec = sj["recipes"][key] = {"label": label, "recipe": name, "convert_s": c.get("convert_s"), "accuracy": acc}
      if key.endswith("+delay"):
        rec["delay_start_raw"] = c["delay_start_raw"]
  return tann, sj, candidates


def spikingjelly_curves_from(path: pathlib.Path, net: Net, args) -> tuple[dict, dict, list]:
  """:func:`spikingjelly_curves`, with SpikingJelly's validation choice and test curves read back from an earlier
  peers.json (``--reuse_spikingjelly``): they depend only on the weights, the images and SpikingJelly's code, which
  this checks are the same (the torch ANN is rebuilt and checked against Flax again); speeds are always measured
  afresh. Saves the hours the torch side takes on two cores when only jaxsnn changed.
  """
  prior = json.loads(path.read_text()).get(net.name)
  if prior is None:
    sys.exit(f"peers.py: --reuse_spikingjelly {path} has no entry for {net.name}; run without it")
  same = {"num_test": len(net.arrays["test_y"]), "calib_images": len(net.arrays["calib_x"]),
          "checkpoint": CHECKPOINTS[net.name] + ".msgpack"}
  differ = {k: (prior.get(k), v) for k, v in same.items() if prior.get(k) != v}
  if prior["spikingjelly"].get("selection", {}).get("images") != args.select:
    differ["select"] = (prior["spikingjelly"].get("selection", {}).get("images"), args.select)
  out = run_torch({**_torch_job(net, args), "tasks": [{"kind": "ann"}]}, net.name)
  tann = out["ann"]
  for k in ("spikingjelly", "torch"):
    if prior["spikingjelly"].get(k) != out["versions"].get(k):
      differ[k] = (prior["spikingjelly"].get(k), out["versions"].get(k))
  if tann["test_accuracy"] != prior["ann"]["torch_test_accuracy"]:
    differ["torch ANN test accuracy"] = (prior["ann"]["torch_test_accuracy"], tann["test_accuracy"])
  if differ:
    sys.exit(f"peers.py: --reuse_spikingjelly {path}: the earlier run of {net.name} differs ({differ}); run without it")
  speed_keys = ("snn_s", "img_steps_per_s", "ratio_to_T_ann_passes", "max_T", "acc_at", "T_target",
                "time_to_target_s")
  old = prior["spikingjelly"]
  sj = {k: old[k] for k in ("ann_accuracy", "torch", "spikingjelly", "python", "torch_threads", "selection")}
  sj["recipes"] = {k: {kk: vv for kk, vv in r.items() if kk not in speed_keys} for k, r in old["recipes"].items()}
  sj["curves_from"] = old.get("curves_from") or {  # the run that simulated them, when that run reused them too
      "file": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path), "date": prior["date"]}
  candidates = sorted({r["recipe"] for r in sj["recipes"].values()})
  print(f"SpikingJelly: validation choice ({sj['selection']['chosen']}) and test curves of {candidates} read back "
        f"from {path} ({prior['date']}); torch ANN checked again: test accuracy {tann['test_accuracy']:.4f}, max "
        f"|logit diff| vs Flax {tann['logit_max_abs_diff']:.2e}", flush=True)
  return tann, sj, candidates


def spikingjelly_speed(net: Net, args, sj: dict, candidates: list) -> None:
  """Fills ``sj`` (from :func:`spikingjelly_curves`) with torch's ANN pass time and each recipe's per-step speed."""
  out = run_torch({**_torch_job(net, args), "tasks": [{"kind": "speed", "recipes": candidates, "T": args.timing_T}]},
                  net.name)
  sp = out["speed"]
  sj.update(ann_pass_s=sp["ann_pass_s"], ann_images_per_s=args.batch / sp["ann_pass_s"])
  for rec in sj["recipes"].values():
    r = sp["recipes"][rec["recipe"]]
    rec.update(snn_s=r["snn_s"], img_steps_per_s=r["img_steps_per_s"],
               ratio_to_T_ann_passes=r["snn_s"] / (args.timing_T * sp["ann_pass_s"]))


def _finish(lib: str, entry: dict, target: float) -> None:
  """Time to target and the table's accuracies for every recipe of one library's entry, then its best recipe."""
  for name, rec in entry["recipes"].items():
    rec.update(summarize(rec["accuracy"], target, rec.get("img_steps_per_s")))
    print(_curve_line(f"{lib} {name}", rec, target), flush=True)
  if entry["recipes"]:
    entry["best"] = best_recipe(entry["recipes"])
    entry["img_steps_per_s"] = entry["recipes"][entry["best"]]["img_steps_per_s"]


def run_net(name: str, args) -> dict:
  """One net's entry of peers.json: the long accuracy runs first (resumable), then both libraries' speeds back to
  back (so the two are timed minutes apart on the same machine state)."""
  print(f"\n=== {name} ({CHECKPOINTS[name]}.msgpack) ===", flush=True)
  net = prepare(name, args)
  jx, snns = jaxsnn_curves(net, args)
  target = jx["ann_accuracy"] - args.drop  # the Flax ANN's accuracy - 1 point, for both libraries
  if args.reuse_spikingjelly:
    tann, sj, candidates = spikingjelly_curves_from(pathlib.Path(args.reuse_spikingjelly).resolve(), net, args)
  else:
    tann, sj, candidates = spikingjelly_curves(net, args)
  if args.check_own_kernels:
    jaxsnn_own_kernels_curve(net, args, snns, jx)
  if args.curves_only:
    print("--curves_only: the accuracy runs are done and cached; run again without it (on an idle machine) for the "
          "speeds", flush=True)
    return None
  print(f"--- speed, batch {args.batch}, T = {args.timing_T} (keep the machine idle) ---", flush=True)
  jaxsnn_speed(net, args, snns, jx)
  spikingjelly_speed(net, args, sj, candidates)
  _finish("jaxsnn", jx, target)
  _finish("SpikingJelly", sj, target)
  return {"checkpoint": CHECKPOINTS[name] + ".msgpack", "num_test": len(net.arrays["test_y"]),
          "calib_images": len(net.arrays["calib_x"]), "batch": args.batch, "timing_T": args.timing_T,
          "drop": args.drop, "target_accuracy": target, "date": datetime.datetime.now().isoformat(timespec="seconds"),
          "ann": {"flax_test_accuracy": jx["ann_accuracy"], "torch_test_accuracy": tann["test_accuracy"],
                  **{k: tann[k] for k in ("logit_max_abs_diff", "logit_max_rel_diff", "argmax_agree",
                                          "logit_check_images")}},
          "jaxsnn": jx, "spikingjelly": sj}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--nets", default=",".join(CHECKPOINTS), help="comma-separated: " + ", ".join(CHECKPOINTS))
  parser.add_argument("--num_test", type=int, default=10_000, help="first N CIFAR-10 test images")
  parser.add_argument("--max_T", type=int, default=512, help="SpikingJelly's simulation length (accuracy at every t)")
  parser.add_argument("--jaxsnn_max_T", type=int, default=128, help="jaxsnn's simulation length")
  parser.add_argument("--calib", type=int, default=10_000, help="first N training images for the thresholds")
  parser.add_argument("--select", type=int, default=512,
                      help="validation images to choose SpikingJelly's best recipe (0: all on the test set)")
  parser.add_argument("--test_T_factor", type=float, default=4.0,
                      help="SpikingJelly's test run stops at this many times the T its chosen recipe needed on the "
                           "validation images (a power of two, >= 64, <= --max_T; 0: always --max_T)")
  parser.add_argument("--sj_recipes", default=",".join(SJ_RECIPES), help="comma-separated: " + ", ".join(SJ_RECIPES))
  parser.add_argument("--jaxsnn_recipes", default=",".join(JAXSNN_RECIPES),
                      help="comma-separated: " + ", ".join(JAXSNN_RECIPES))
  parser.add_argument("--jaxsnn_block", type=int, default=None, help="jaxsnn layer-major block K (default step-major)")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--timing_T", type=int, default=64, help="steps of the speed measurement")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--drop", type=float, default=0.01, help="accuracy below the ANN that counts as reached")
  parser.add_argument("--check", type=int, default=256, help="test images whose ANN logits are compared")
  parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
  parser.add_argument("--no_check_own_kernels", dest="check_own_kernels", action="store_false",
                      help="skip the chosen recipe's test curve with XLA's own kernels (the fast kernels' check)")
  parser.add_argument("--curves_only", action="store_true",
                      help="run (and cache) the accuracy runs only; the speeds need an idle machine: run again "
                           "without it, and the cached curves are read back")
  parser.add_argument("--reuse_spikingjelly", default=None, metavar="PEERS_JSON",
                      help="read SpikingJelly's validation choice and test curves back from an earlier peers.json "
                           "(same weights, images and SpikingJelly: checked) instead of rerunning them; its speeds "
                           "are measured afresh")
  parser.add_argument("--jaxsnn_worker", nargs=2, default=None, help=argparse.SUPPRESS)
  parser.add_argument("--out", default=str(DEFAULT_OUT))
  parser.add_argument("--table", action="store_true", help="print the markdown table of --out and exit")
  args = parser.parse_args()
  if args.jaxsnn_worker:
    import jaxsnn.xla
    jaxsnn.xla.use_fast_cpu_kernels()  # unless the parent opted out (JAXSNN_FAST_CPU=0)
    jaxsnn_worker(*args.jaxsnn_worker)
    return
  out = pathlib.Path(args.out)
  if args.table:
    print(render_table(json.loads(out.read_text())))
    return
  args.nets = args.nets.split(",")
  args.sj_recipes = args.sj_recipes.split(",")
  args.jaxsnn_recipes = args.jaxsnn_recipes.split(",")
  for given, known, flag in ((args.nets, CHECKPOINTS, "--nets"), (args.sj_recipes, SJ_RECIPES, "--sj_recipes"),
                             (args.jaxsnn_recipes, JAXSNN_RECIPES, "--jaxsnn_recipes")):
    bad = [n for n in given if n not in known]
    if bad:
      parser.error(f"{flag}: unknown {bad}; choose from {list(known)}")
  if not PEERS_PYTHON.exists():
    sys.exit(f"peers.py: SpikingJelly's venv is missing ({PEERS_PYTHON.relative_to(ROOT)}). Install it (torch CPU "
             "wheel + spikingjelly 2.0, ~1 GB) with:\n    bash benchmarks/setup_peers.sh")
  if args.select == 0 and len(args.jaxsnn_recipes) > 1:
    print("peers.py: --select 0: every jaxsnn candidate runs on the test set; none is chosen there", flush=True)
  probe = subprocess.run([str(PEERS_PYTHON), "-c", "import torch, spikingjelly.activation_based.ann2snn"],
                         capture_output=True, text=True)
  if probe.returncode:
    sys.exit(f"peers.py: the peers venv cannot import SpikingJelly's ann2snn:\n{probe.stderr.strip()}\n"
             "Repair it with: bash benchmarks/setup_peers.sh")

  import jaxsnn.xla
  jaxsnn.xla.use_fast_cpu_kernels()  # jaxsnn's defaults (JAXSNN_FAST_CPU=0 to opt out), before JAX starts
  import jax
  results = json.loads(out.read_text()) if out.exists() else {}
  for net in args.nets:
    entry = run_net(net, args)
    if entry is None:
      continue
    results[net] = entry
    results["meta"] = {"machine": machine_info(), "versions": f"jax {jax.__version__}, "
                       f"torch {results[net]['spikingjelly']['torch']}, "
                       f"spikingjelly {results[net]['spikingjelly']['spikingjelly']}",
                       "command": " ".join(sys.argv)}
    write_json(out, results)
    print(f"wrote {out}", flush=True)
  print("\n" + render_table(results))


if __name__ == "__main__":
  main()
