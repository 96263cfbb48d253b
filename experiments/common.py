"""What the experiment scripts share: paths, the committed checkpoints with their data, the named conversion arms
(each one call of :mod:`jaxsnn.recipes`), result caching and reporting, and the CPU allocator.

Every script in ``experiments/`` imports this module (``import common``: the script's own directory is on the
path) and nothing from another script; all conversion logic is library code (``jaxsnn``): an arm here is only a name
and the options of one recipe call. Importing it puts the repository root on ``sys.path`` so that
``experiments.configs`` is importable from any working directory.

Committed reference checkpoints live in ``experiments/checkpoints/NAME.msgpack`` with ``NAME.config.json`` and
``NAME.metrics.jsonl``; a run directory of ``experiments/train.py`` holds ``config.json``, ``best.msgpack`` and
``metrics.jsonl``; ``jaxsnn.training.load_trained`` reads either.

XLA's CPU kernels: every conversion script calls ``jaxsnn.xla.use_fast_cpu_kernels()`` first thing in ``main()``
(before JAX computes anything), so jaxsnn's entry points simulate with XLA:CPU's fast contraction kernels unless
``JAXSNN_FAST_CPU=0``; importing this module (or jaxsnn) changes nothing.

The CPU allocator (:func:`use_tcmalloc`): Runs a script under tcmalloc when the machine has it: CPU training here spends a third of its time in the kernel.

XLA:CPU allocates and frees its temporary buffers on every step. Under glibc's malloc, buffers above the mmap
threshold (the im2col and activation buffers of a CIFAR batch are tens of MB) are mmap'ed and unmapped each time,
so every step page-faults its whole working set back in. Measured on a CIFAR-10 ResNet-20 training step (batch
128, 2 cores): 246,000 minor page faults and 12.3 s of system time per 15 steps under glibc; 16,000 faults and
4.0 s under tcmalloc with ``TCMALLOC_RELEASE_RATE=0``; 103 → 147 images/s. The numbers computed are the same
(the allocator only changes where buffers live).

Call ``use_tcmalloc()`` at the start of a script's ``main()`` (the re-exec then costs one more import of jax). It re-runs
the process with tcmalloc preloaded when ``libtcmalloc_minimal.so.4`` is installed (Debian/Ubuntu package
``libtcmalloc-minimal4``; ``scripts/setup_offline_data.sh`` installs it) and does nothing otherwise. Set
``JAXSNN_MALLOC=system`` to keep the system allocator.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import sys
import time
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))  # experiments.configs.* import each other as a package

CHECKPOINTS = ROOT / "experiments" / "checkpoints"
DEFAULT_RUN = CHECKPOINTS / "fashion_mnist_small_cnn"
RUNS = ROOT / "experiments" / "runs"  # default output of scripts (ignored by git); committed results are elsewhere


def resolve_run(name_or_path) -> pathlib.Path:
  """A committed checkpoint name (``cifar10_resnet20``) or a path (a run directory or a checkpoint)."""
  path = pathlib.Path(name_or_path)
  if not path.exists() and not path.with_suffix(".msgpack").exists() and (CHECKPOINTS / f"{name_or_path}.msgpack").exists():
    return CHECKPOINTS / str(name_or_path)
  return path


def best_epoch(run) -> dict:
  """The metrics line of the run's best validation accuracy (the epoch its variables hold)."""
  from jaxsnn import training
  lines = training.checkpoint_files(run)[2].read_text().splitlines()
  metrics = [json.loads(line) for line in lines if line.strip()]
  return max((m for m in metrics if "val_accuracy" in m), key=lambda m: m["val_accuracy"], default={})


@dataclasses.dataclass
class Run:
  """A trained network with its data: what every conversion experiment starts from."""
  name: str
  config: Any
  model: Any
  apply_fn: Callable
  variables: Any
  train: Any  # data.Arrays of the training split (validation held out): thresholds come from here only
  validation: Any  # data.Arrays of the validation split (the last val_examples training images): choices only
  test: Any  # data.Arrays of the test split
  spec: Any

  def normalize(self, images):
    from jaxsnn import data
    return data.normalize(images, self.spec.mean, self.spec.std)


def load_run(run, data_dir: Optional[str] = None) -> Run:
  """Loads a committed checkpoint or run directory, its model, and its dataset's train, validation and test splits."""
  from jaxsnn import data, training
  try:
    config, model, variables = training.load_trained(run)
  except FileNotFoundError as e:
    raise SystemExit(f"--run: {e}") from None
  apply_fn = functools.partial(_apply, model)
  spec = data.spec(config.dataset)
  split = data.splits(config.dataset, config.val_examples)
  data_dir = data_dir or config.data_dir
  load = functools.partial(data.load, config.dataset, data_dir=data_dir)
  train, test = load(split["train"]), load(split["test"])
  validation = load(split["validation"]) if "validation" in split else None
  checkpoint = training.checkpoint_files(run)[1]
  name = checkpoint.stem if checkpoint.name != "best.msgpack" else pathlib.Path(run).name
  return Run(name, config, model, apply_fn, variables, train, validation, test, spec)


def _apply(model, variables, x):
  return model.apply(variables, x, train=False)


def first(arrays, n: Optional[int]):
  """The first ``n`` examples of a ``data.Arrays`` (all of them for None)."""
  from jaxsnn import data
  return arrays if n is None else data.Arrays(arrays.images[:n], arrays.labels[:n])


def batches(run: Run, arrays, batch_size: int) -> Iterator[dict]:
  """``{"image", "label", "mask"}`` batches of ``arrays`` in order (the last one padded and masked), normalised."""
  from jaxsnn import data
  return data.batches(arrays, batch_size, train=False, mean=run.spec.mean, std=run.spec.std)


def train_batches(run: Run, num_examples: int, batch_size: int) -> list:
  """The first ``num_examples`` training images as batches (thresholds and every low-latency tool read these)."""
  return list(batches(run, first(run.train, num_examples), batch_size))


def write_json(path, obj) -> None:
  """Writes ``obj`` as JSON atomically (``jaxsnn.files.write_json``)."""
  from jaxsnn import files
  files.write_json(path, obj)


# ----------------------------------------------------------------------------------------------------------------
# The CPU allocator.
# ----------------------------------------------------------------------------------------------------------------

LIBRARY = "libtcmalloc_minimal.so.4"
SEARCH_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
               "/usr/local/lib")


def tcmalloc_environ(environ: Mapping[str, str],
                     search_dirs: Sequence[str] = SEARCH_DIRS) -> Optional[dict[str, str]]:
  """The environment to re-exec with, or None when tcmalloc is off, missing or already loaded."""
  if environ.get("JAXSNN_MALLOC", "tcmalloc") == "system" or "tcmalloc" in environ.get("LD_PRELOAD", ""):
    return None
  for directory in search_dirs:
    path = os.path.join(directory, LIBRARY)
    if os.path.isfile(path):
      env = dict(environ)
      env["LD_PRELOAD"] = ":".join(p for p in (path, environ.get("LD_PRELOAD", "")) if p)
      env.setdefault("TCMALLOC_RELEASE_RATE", "0")  # keep freed pages: they are reused by the next step
      return env
  return None


def use_tcmalloc() -> None:
  """Re-executes the running script with tcmalloc preloaded if it is available (Linux only); else returns."""
  if not sys.platform.startswith("linux"):
    return
  env = tcmalloc_environ(os.environ)
  if env is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


# ----------------------------------------------------------------------------------------------------------------
# Conversion methods and their evaluation (shared by main.py, paper.py and qcfs.py).
# ----------------------------------------------------------------------------------------------------------------

NORM_NAMES = {"neuron": "NeuronNorm", "layer": "LayerNorm", "channel": "ChannelNorm", "qcfs": "QCFS λ"}
RECORD = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclasses.dataclass(frozen=True)
class Method:
  """How a trained network becomes an SNN: neuron, thresholds, initial potential, and the low-latency tools.

  Attributes:
    neuron: ``"SNM"`` or ``"IF"``.
    norm: thresholds from the calibration maxima (``"neuron"``, ``"layer"``, ``"channel"``), or ``"qcfs"`` (the
      network's own QCFS thresholds; ReLU sites, if any, take NeuronNorm).
    potential: initial membrane potential, a fraction of the threshold (None: jaxsnn's default, 0 for ReLU sites
      and 0.5 for QCFS sites).
    tuned: thresholds chosen for the target T (``jaxsnn.thresholds_for_steps``, per channel).
    calibrated: ``jaxsnn.calibrate_snn`` at the target T (initial potentials, per channel).
    end_to_end: then ``jaxsnn.tune_snn`` at the target T (per-channel thresholds, offsets and potentials descended
      through the simulation on training batches).
    delayed: then ``jaxsnn.choose_readout_delay`` at the target T (the first steps left out of the readout, the
      delay chosen by agreement with the ANN on training images).
    target: the T that ``tuned`` / ``calibrated`` aim at; the run stops there.
    authors: the authors' test-leaking threshold protocol (comparison only).
  """
  neuron: str = "SNM"
  norm: str = "neuron"
  potential: Optional[float] = 0.0
  tuned: bool = False
  calibrated: bool = False
  end_to_end: bool = False
  delayed: bool = False
  target: Optional[int] = None
  authors: bool = False

  @property
  def name(self) -> str:
    parts = [self.neuron, NORM_NAMES[self.norm]]
    if self.potential:
      parts.append("θ/2" if self.potential == 0.5 else f"v0={self.potential}θ")
    if self.tuned:
      parts.append("T-aware θ")
    if self.calibrated:
      parts.append("calibration")
    if self.end_to_end:
      parts.append("end-to-end")
    if self.delayed:
      parts.append("delayed readout")
    if self.authors:
      parts.append("authors' protocol (leaks test)")
    return " + ".join(parts) + (f" (T={self.target})" if self.target else "")

  def steps(self, num_steps: int) -> int:
    return self.target if self.target else num_steps


def paper_methods() -> list:
  """The four arms of the paper's Fig. 4 (v0 = 0)."""
  return [Method(n, norm) for norm in ("layer", "neuron") for n in ("IF", "SNM")]


def lowlatency_methods(targets=(4, 8, 16, 32)) -> list:
  """The paper's method, each low-latency tool alone and stacked (SNM), and the paper / θ/2 / stacked for IF."""
  out = []
  for neuron in ("SNM", "IF"):
    out += [Method(neuron), Method(neuron, potential=0.5)]
    for t in targets:
      if neuron == "SNM":
        out += [Method(neuron, tuned=True, target=t), Method(neuron, calibrated=True, target=t),
                Method(neuron, potential=0.5, tuned=True, target=t)]
      out.append(Method(neuron, potential=0.5, tuned=True, calibrated=True, target=t))
      if neuron == "SNM":
        out.append(Method(neuron, potential=0.5, tuned=True, calibrated=True, delayed=True, target=t))
  return out


def end_to_end_methods(targets=(8, 16)) -> list:
  """The stacked SNM recipe, then ``jaxsnn.tune_snn`` (the low-latency issue's stretch goal)."""
  return [Method("SNM", potential=0.5, tuned=True, calibrated=True, end_to_end=True, target=t) for t in targets]


def qcfs_methods(targets=(4, 8, 16)) -> list:
  """A QCFS network: its own thresholds with v0 = θ/2, IF and SNM, with and without calibration (SNM also with the
  readout delay on top)."""
  out = []
  for neuron in ("IF", "SNM"):
    out.append(Method(neuron, norm="qcfs", potential=None))
    out += [Method(neuron, norm="qcfs", potential=None, calibrated=True, target=t) for t in targets]
  out += [Method("SNM", norm="qcfs", potential=None, calibrated=True, delayed=True, target=t) for t in targets]
  return out


def qcfs_and_lowlatency_methods(targets=(4, 8, 16)) -> list:
  """The QCFS arms, then the ReLU nets' stacked SNM recipe on the same QCFS net: thresholds from the training
  maxima tuned for each target T instead of λ, θ/2, calibration and the delayed readout."""
  return qcfs_methods(targets) + [Method("SNM", potential=0.5, tuned=True, calibrated=True, delayed=True, target=t)
                                  for t in targets]


def build_snn(run: Run, method: Method, num_steps: int, train: list, stats, histograms: Callable[[], Any] | None = None,
              progress: bool = True, tune_checkpoint=None):
  """The SNN of ``method`` for ``run``: one call of :mod:`jaxsnn.recipes` with the method's options, on the training
  batches ``train`` (statistics, histograms and every tool; ``stats`` and ``histograms()`` are the ones already
  computed on them, reused across methods)."""
  import jaxsnn
  neuron = jaxsnn.SNM() if method.neuron == "SNM" else jaxsnn.IF()
  common = dict(neuron=neuron, stats=stats, check_examples=0, progress=progress)
  if method.authors:
    raise ValueError("build_snn: the authors' protocol has no recipe (it leaks the test set): see Job._authors")
  if method.norm == "qcfs":
    steps = num_steps if method.calibrated or method.delayed else None
    snn, _ = jaxsnn.recipes.qcfs(run.apply_fn, run.variables, train, steps, snn_calibration=method.calibrated,
                                 readout_delay=method.delayed, **common)
  elif not (method.tuned or method.calibrated or method.end_to_end or method.delayed):
    snn, _ = jaxsnn.recipes.paper(run.apply_fn, run.variables, train, norm=method.norm,
                                  initial_potential=method.potential or 0.0, **common)
  else:
    snn, _ = jaxsnn.recipes.low_latency(
        run.apply_fn, run.variables, train, num_steps, initial_potential=method.potential or 0.0,
        t_aware_thresholds=method.tuned, snn_calibration=method.calibrated, end_to_end=method.end_to_end,
        readout_delay=method.delayed, histograms=histograms() if method.tuned else None,
        tune_checkpoint=tune_checkpoint, **common)
  return snn


class Job:
  """One network, its calibration statistics (training data only), and cached method results in a work dir.

  Every method's result is written atomically to ``work/<method>.json`` as soon as it is done, and its evaluation
  checkpoints every few batches (``jaxsnn.evaluate(checkpoint=...)``): the same command run again after a kill skips
  what is done and resumes the rest. A result for a larger T or the same settings is reused for a smaller T. With
  ``select`` validation images, every method is also scored on the first ``select`` images of the validation split
  (the last training images, held out from training and from the thresholds): that, never the test set, chooses
  "the best recipe at T" in the reports.
  """

  def __init__(self, run: Run, work, num_test: Optional[int], calib_examples: int, batch_size: int,
               block_size: Optional[int] = None, progress: bool = True, select: int = 0):
    import jaxsnn
    self.run, self.work = run, pathlib.Path(work)
    self.test = first(run.test, num_test)
    self.batch_size, self.block_size, self.progress = batch_size, block_size, progress
    self.settings = {"test_images": int(len(self.test.labels)), "calibration_images": calib_examples,
                     "calibrate_snn_images": jaxsnn.recipes.SNN_CALIBRATION_EXAMPLES, "batch_size": batch_size}
    self.select = select
    if select and (run.validation is None or len(run.validation.labels) < select):
      raise SystemExit(f"--select {select}: the run holds out {0 if run.validation is None else len(run.validation.labels)}"
                       " validation images")
    self.work.mkdir(parents=True, exist_ok=True)
    self.train = train_batches(run, calib_examples, batch_size)
    stats_file = self.work / f"stats_{calib_examples}.jaxsnn"
    old_file = stats_file.with_suffix(".npz")  # the .npz of a work dir made before jaxsnn's file format (still read)
    if stats_file.exists() or old_file.exists():
      self.stats = jaxsnn.load_stats(stats_file if stats_file.exists() else old_file)
    else:
      self.stats = jaxsnn.calibrate(run.apply_fn, run.variables, self.train, progress=progress)
      jaxsnn.save_stats(stats_file, self.stats)
    self._hist = None
    self.calib_examples = calib_examples

  def histograms(self):
    import jaxsnn
    if self._hist is None:
      self._hist = jaxsnn.ratio_histograms(self.run.apply_fn, self.run.variables, self.train, self.stats,
                                           progress=self.progress)
    return self._hist

  def snn(self, method: Method, num_steps: int):
    """The converted (and, per the method, tuned and calibrated) network."""
    return build_snn(self.run, method, num_steps, self.train, self.stats, self.histograms, progress=self.progress,
                     tune_checkpoint=self.path_of(method).with_suffix(".tune.npz"))

  def path_of(self, method: Method, split: str = "test") -> pathlib.Path:
    slug = "".join(c if c.isalnum() else "_" for c in method.name.replace("θ/2", "half").replace("λ", "lambda"))
    # The image count is in the name: a 1,000-image run (the README's command) never overwrites a full-set result.
    images = self.settings["test_images"] if split == "test" else self.select
    return self.work / (f"{slug}.{images}img.json" if split == "test" else f"{slug}.val{images}img.json")

  def cached(self, method: Method, num_steps: int) -> Optional[dict]:
    """The method's result if it is in the work dir for these settings and at least its T; else None."""
    steps = method.steps(num_steps)
    path = self.path_of(method)
    if path.exists():
      cached = json.loads(path.read_text())
      if cached["settings"] == self.settings and cached["steps"] >= steps:
        return _truncate(cached, steps)
    return None

  def seed(self, results: dict) -> None:
    """Puts the test results of a committed results JSON into the work dir (same settings), so that only what is
    missing (e.g. the validation scores) runs."""
    for name, r in results.items():
      method = Method(**r["method"]) if "method" in r else None
      path = self.path_of(method) if method is not None else None
      if path is not None and not path.exists() and r.get("settings") == self.settings:
        write_json(path, {k: v for k, v in r.items() if k != "validation"})

  def validation(self, method: Method, num_steps: int, snn=None) -> dict:
    """The method's accuracy after every t <= its T on the first ``select`` validation images (cached)."""
    import jaxsnn
    steps = method.steps(num_steps)
    path = self.path_of(method, "validation")
    if path.exists():
      cached = json.loads(path.read_text())
      if cached["steps"] >= steps:
        return {"images": cached["images"], "accuracy": cached["accuracy"][:steps]}
    if method.authors:
      return {}
    snn = snn if snn is not None else self.snn(method, steps)
    res = jaxsnn.evaluate(snn, batches(self.run, first(self.run.validation, self.select), self.batch_size), steps,
                          self.block_size, progress=self.progress)
    out = {"images": self.select, "steps": steps, "accuracy": res.accuracy.tolist()}
    write_json(path, out)
    return {"images": self.select, "accuracy": out["accuracy"]}

  def result(self, method: Method, num_steps: int) -> dict:
    """The method's accuracy after every t <= its T, rates and energy at the recorded steps (cached), and with
    ``select``, its validation accuracy."""
    import jaxsnn
    cached = self.cached(method, num_steps)
    if cached is not None:
      if self.select and not method.authors:
        cached["validation"] = self.validation(method, num_steps)
      return cached
    steps = method.steps(num_steps)
    path = self.path_of(method)
    t0 = time.time()
    snn = None if method.authors else self.snn(method, steps)
    prepare_seconds = time.time() - t0
    t0 = time.time()
    if method.authors:
      res = self._authors(steps)
    else:
      res = jaxsnn.evaluate(snn, batches(self.run, self.test, self.batch_size), steps, self.block_size,
                            progress=self.progress, record_steps=[t for t in RECORD if t <= steps],
                            checkpoint=path.with_suffix(".progress.npz"))
    seconds = time.time() - t0
    out = {"name": method.name, "method": dataclasses.asdict(method), "settings": self.settings, "steps": steps,
           "accuracy": res.accuracy.tolist(), "seconds": round(seconds, 1),
           "prepare_seconds": round(prepare_seconds, 1), "non_finite": res.non_finite}
    if method.delayed:
      out["readout_delay"] = int(snn.readout_delay)
    if res.recorded is not None:
      out["at"] = cost_at(snn, res)
    write_json(path, out)
    for suffix in (".progress.npz", ".tune.npz"):
      if path.with_suffix(suffix).exists():
        path.with_suffix(suffix).unlink()
    if self.select and not method.authors:
      out = dict(out, validation=self.validation(method, num_steps, snn))
    return out

  def _authors(self, steps: int):
    """The authors' protocol over the whole test set: slots of 256 from the test batches, then the train batches."""
    import jaxsnn
    slot = 256
    full = lambda arrays: [b for b in batches(self.run, arrays, slot) if b["mask"].all()]  # noqa: E731
    slots = jaxsnn.authors_protocol.thresholds(self.run.apply_fn, self.run.variables,
                                               full(self.test) + full(first(self.run.train, self.calib_examples)))
    return jaxsnn.authors_protocol.evaluate(self.snn(Method("SNM"), steps), batches(self.run, self.test, slot), slots,
                                            steps, self.block_size, progress=self.progress)


def cost_at(snn, res) -> dict:
  """``{t: rates and Eq. 15 energy ratio}`` at every step an evaluation recorded (``evaluate(record_steps=...)``):
  the cost summary of every method in the results JSONs."""
  import jaxsnn
  out = {}
  for t in res.recorded.steps:
    counts = jaxsnn.analysis.recorded_counts(res, t)
    e = jaxsnn.analysis.energy(snn, counts)
    e_avg = jaxsnn.analysis.energy(snn, counts, pooling="average")
    out[str(t)] = {
        "average_firing_rate": jaxsnn.analysis.average_firing_rate(counts),
        "firing_rates": jaxsnn.analysis.firing_rates(counts),
        "positive_rates": jaxsnn.analysis.firing_rates(counts, sign="pos"),
        "negative_rates": jaxsnn.analysis.firing_rates(counts, sign="neg"),
        "energy_ratio": float(e.ratio), "energy_ratio_average_pooling": float(e_avg.ratio)}
  return out


def _truncate(result: dict, steps: int) -> dict:
  out = dict(result, steps=steps, accuracy=result["accuracy"][:steps])
  if "at" in result:
    out["at"] = {t: v for t, v in result["at"].items() if int(t) <= steps}
  return out


def report(job: Job, results: dict, ann_accuracy: float, pending: Sequence[str] = ()) -> dict:
  """The results JSON (the schema of experiments/main.py); ``pending`` names the methods not done yet (a partial
  report lists them under ``"pending"``; a complete one has no such key)."""
  out = {"checkpoint": job.run.name, "dataset": job.run.config.dataset, "model": job.run.config.model,
         "test_images": job.settings["test_images"], "calibration_images": job.settings["calibration_images"],
         "ann_accuracy": ann_accuracy, "methods": results}
  if pending:
    out["pending"] = list(pending)
  return out


def ann_accuracy(run: Run, arrays, batch_size: int) -> float:
  from jaxsnn import training
  res = training.evaluate(run.model.apply, run.variables, arrays, batch_size, run.spec.mean, run.spec.std)
  return float(res["accuracy"])


def table(report_: dict, steps: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128), with_cost: bool = True) -> str:
  """A markdown table: accuracy (%) after T steps, and (per method, at its largest shown T) rate and energy."""
  shown = [t for t in steps if any(len(r["accuracy"]) >= t for r in report_["methods"].values())]
  head = "| method | " + " | ".join(f"T={t}" for t in shown) + (" | avg rate | E_SNN/E_ANN |" if with_cost else " |")
  lines = [f"ANN {100 * report_['ann_accuracy']:.2f} % on {report_['test_images']} test images", "", head,
           "|" + "---|" * (len(shown) + 1 + 2 * with_cost)]
  for name, r in report_["methods"].items():
    acc = r["accuracy"]
    cells = [f"{100 * acc[t - 1]:.2f}" if t <= len(acc) else "" for t in shown]
    row = f"| {name} | " + " | ".join(cells)
    if with_cost:
      last = str(max((int(t) for t in r.get("at", {})), default=0))
      at = r.get("at", {}).get(last)
      row += (f" | {at['average_firing_rate']:.4f} (T={last}) | {at['energy_ratio']:.3f} (T={last})" if at
              else " | | ")
    lines.append(row + " |")
  return "\n".join(lines)


def chosen(report_: dict, steps: Sequence[int] = (4, 8, 16, 32)) -> dict:
  """``{T: (method name, test accuracy, validation accuracy)}``: at each T, the method with the best accuracy at T on
  the validation images (the first of equals), among the methods simulated to T (a method tuned for a target T
  competes at its target only). None where a candidate has no validation score: the test set never chooses."""
  out = {}
  for t in steps:
    candidates = [(name, r) for name, r in report_["methods"].items()
                  if t <= len(r["accuracy"]) and r.get("method", {}).get("target") in (None, t)
                  and not r.get("method", {}).get("authors")]
    if not candidates or any("validation" not in r or t > len(r["validation"]["accuracy"]) for _, r in candidates):
      out[t] = None
      continue
    name, r = max(candidates, key=lambda nr: nr[1]["validation"]["accuracy"][t - 1])  # max keeps the first of equals
    out[t] = (name, r["accuracy"][t - 1], r["validation"]["accuracy"][t - 1])
  return out


def cost_table(report_: dict, steps: Sequence[int] = (4, 8, 16, 32)) -> str:
  """Markdown: per method, accuracy (%) / average firing rate / Eq. 15 energy ratio at each T; a method tuned for a
  target T fills only that column. Then the method chosen at each T on the validation images (:func:`chosen`) with
  its test accuracy and the points lost against the ANN, and, for reference only, the best test accuracy (which no
  rule may choose by)."""
  ann = report_["ann_accuracy"]
  head = "| method | " + " | ".join(f"T={t}: acc / rate / E" for t in steps) + " |"
  lines = [head, "|" + "---|" * (len(steps) + 1)]
  oracle = {t: None for t in steps}
  for name, r in report_["methods"].items():
    target = r["method"].get("target") if "method" in r else None
    cells = []
    for t in steps:
      at = r.get("at", {}).get(str(t))
      if t > len(r["accuracy"]) or (target and target != t) or at is None:
        cells.append("")
        continue
      acc = r["accuracy"][t - 1]
      cells.append(f"{100 * acc:.2f} / {at['average_firing_rate']:.3f} / {at['energy_ratio']:.2f}")
      if not r.get("method", {}).get("authors") and (oracle[t] is None or acc > oracle[t]):
        oracle[t] = acc
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  picks = chosen(report_, steps)
  images = {r["validation"]["images"] for r in report_["methods"].values() if "validation" in r}
  label = f"chosen on {images.pop():,} validation images" if len(images) == 1 else "chosen on validation images"
  lines.append(f"| **{label}: test % (points lost vs ANN)** | " + " | ".join(
      f"**{100 * p[1]:.2f}** ({100 * (ann - p[1]):+.2f}): {p[0]}" if p else "(no validation scores)"
      for p in picks.values()) + " |")
  lines.append("| best on the test set (reference only, not a choice) | " + " | ".join(
      f"{100 * a:.2f} ({100 * (ann - a):+.2f})" if a is not None else "" for a in oracle.values()) + " |")
  return "\n".join(lines)


def recipes(report_: dict) -> dict:
  """``{recipe: {T: (accuracy, energy ratio)}}`` for ``jaxsnn.plotting.plot_recipes``: a method tuned for a target T
  is one point of its recipe (the name without " (T=...)"); a method simulated once gives every recorded T."""
  out: dict = {}
  for name, r in report_["methods"].items():
    target = r.get("method", {}).get("target")
    recipe = name.rsplit(" (T=", 1)[0] if target else name
    at = r.get("at", {})
    steps = [target] if target else [int(t) for t in at if int(t) <= len(r["accuracy"])] or [len(r["accuracy"])]
    for t in steps:
      e = at.get(str(t), {}).get("energy_ratio")
      out.setdefault(recipe, {})[t] = (r["accuracy"][t - 1], e)
  return out


# Method sets of main.py --methods (and site_errors.py).
SETS = {
    "paper": lambda targets: paper_methods(),  # the paper's arms have no target T
    "lowlatency": lowlatency_methods,
    "qcfs": qcfs_methods,
    "qcfs+lowlatency": qcfs_and_lowlatency_methods,
    "endtoend": end_to_end_methods,
}


def readme_methods(targets):
  """The README's main job: the paper's method, IF + LayerNorm, θ/2, and the stacked recipe for each target."""
  return [Method("SNM"), Method("IF", "layer"), Method("SNM", potential=0.5)] + [
      Method("SNM", potential=0.5, tuned=True, calibrated=True, target=t) for t in targets]


def methods_from(spec: str, targets) -> list:
  """The methods of a ``--methods`` value: a set name, ``all``, or method names separated by ``;``."""
  if spec == "readme":
    return readme_methods(targets)
  if spec == "all":
    seen, out = set(), []
    for make in SETS.values():
      for m in make(targets):
        if m.name not in seen:
          seen.add(m.name)
          out.append(m)
    return out
  if spec in SETS:
    return SETS[spec](targets)
  known = {m.name: m for m in methods_from("all", targets) + readme_methods(targets)}
  missing = [n for n in spec.split(";") if n.strip() not in known]
  if missing:
    raise SystemExit(f"--methods: unknown {missing}; choose a set ({', '.join(['readme', *SETS, 'all'])}) or names "
                     f"separated by ';' among:\n  " + "\n  ".join(known))
  return [known[n.strip()] for n in spec.split(";")]
