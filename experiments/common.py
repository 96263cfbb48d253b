"""What the experiment scripts share: paths, configs, checkpoints, data batches, atomic JSON, the CPU allocator.

Every script in ``experiments/`` imports this module (``import common``: the script's own directory is on the
path) and nothing from another script; all conversion logic is library code (``jaxsnn``). Importing it puts the
repository root on ``sys.path`` so that ``experiments.configs`` is importable from any working directory.

Committed reference checkpoints live in ``experiments/checkpoints/NAME.msgpack`` with ``NAME.config.json`` and
``NAME.metrics.jsonl``; a run directory of ``experiments/train.py`` holds ``config.json``, ``best.msgpack`` and
``metrics.jsonl``; :func:`run_files` accepts either.

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
import importlib.util
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


def load_config(path):
  """The ``TrainConfig`` of a config file (``experiments/configs/*.py``, which defines ``get_config()``)."""
  module_spec = importlib.util.spec_from_file_location("config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config()


def run_files(run) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
  """(config, checkpoint, metrics) paths of a run directory or of a committed checkpoint ``.../NAME[.msgpack]``."""
  run = pathlib.Path(run)
  if run.is_dir():
    files = run / "config.json", run / "best.msgpack", run / "metrics.jsonl"
  else:
    stem = str(run)[:-len(".msgpack")] if run.name.endswith(".msgpack") else str(run)
    files = tuple(pathlib.Path(stem + ext) for ext in (".config.json", ".msgpack", ".metrics.jsonl"))
  missing = [str(f) for f in files if not f.is_file()]
  if missing:
    raise SystemExit(f"--run {run}: missing {', '.join(missing)}. Pass a run directory of experiments/train.py "
                     "(config.json, best.msgpack, metrics.jsonl) or a committed checkpoint such as "
                     "experiments/checkpoints/cifar10_resnet20 (.msgpack, .config.json, .metrics.jsonl).")
  return files


def resolve_run(name_or_path) -> pathlib.Path:
  """A committed checkpoint name (``cifar10_resnet20``) or a path, as a path for :func:`run_files`."""
  path = pathlib.Path(name_or_path)
  if not path.exists() and not path.with_suffix(".msgpack").exists() and (CHECKPOINTS / f"{name_or_path}.msgpack").exists():
    return CHECKPOINTS / str(name_or_path)
  return path


def best_epoch(run) -> dict:
  """The metrics line of the run's best validation accuracy (the epoch best.msgpack holds)."""
  lines = run_files(run)[2].read_text().splitlines()
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
  test: Any  # data.Arrays of the test split
  spec: Any

  def normalize(self, images):
    from jaxsnn import data
    return data.normalize(images, self.spec.mean, self.spec.std)


def load_run(run, data_dir: Optional[str] = None) -> Run:
  """Loads a committed checkpoint or run directory, its model, and its dataset's train and test splits."""
  from jaxsnn import data, training
  config_file, checkpoint, _ = run_files(run)
  config = training.TrainConfig(**json.loads(config_file.read_text()))
  model = training.build_model(config)
  variables = training.load_variables(checkpoint)
  variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
  apply_fn = lambda v, x: model.apply(v, x, train=False)  # noqa: E731
  spec = data.spec(config.dataset)
  split = data.splits(config.dataset, config.val_examples)
  data_dir = data_dir or config.data_dir
  train = data.load(config.dataset, split["train"], data_dir=data_dir)
  test = data.load(config.dataset, split["test"], data_dir=data_dir)
  name = pathlib.Path(str(checkpoint)).stem if checkpoint.name != "best.msgpack" else pathlib.Path(run).name
  return Run(name, config, model, apply_fn, variables, train, test, spec)


def first(arrays, n: Optional[int]):
  """The first ``n`` examples of a ``data.Arrays`` (all of them for None)."""
  from jaxsnn import data
  return arrays if n is None else data.Arrays(arrays.images[:n], arrays.labels[:n])


def eval_batches(run: Run, arrays, batch_size: int) -> Iterator[tuple]:
  """``(x, labels, mask)`` batches of ``arrays`` (the last one padded and masked), normalised."""
  from jaxsnn import data
  for b in data.batches(arrays, batch_size, train=False, mean=run.spec.mean, std=run.spec.std):
    yield b["image"], b["label"], b["mask"]


def calibration_batches(run: Run, num_examples: int, batch_size: int) -> Iterator[tuple]:
  """``(x, mask)`` batches of the first ``num_examples`` training images: padding is masked out of the stats."""
  for x, _, mask in eval_batches(run, first(run.train, num_examples), batch_size):
    yield x, mask


def write_json(path, obj) -> None:
  """Writes ``obj`` as JSON atomically (temporary file, then rename): a killed run never leaves half a file."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  tmp.write_text(json.dumps(obj, indent=1))
  os.replace(tmp, path)


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


TUNE_IMAGES, TUNE_STEPS = 1024, 200  # end-to-end tuning: training images (batches of 128) and Adam steps
DELAY_IMAGES = 1024  # training images on which jaxsnn.choose_readout_delay compares the SNN with the ANN


def make_snn(run: Run, method: Method, stats, num_steps: int, hist: Callable[[], Any] | None = None,
             calib_snn_batches: Sequence[Any] = (), progress: bool = True, tune_checkpoint=None):
  """The SNN of ``method`` for ``run``: thresholds from ``stats`` (or ``hist()`` for the tuned methods), the
  initial potential, ``jaxsnn.calibrate_snn`` on ``calib_snn_batches`` for the calibrated ones, and
  ``jaxsnn.tune_snn`` on the first ``TUNE_IMAGES`` training images for the end-to-end ones (resumable from
  ``tune_checkpoint``, a file path, when given), and ``jaxsnn.choose_readout_delay`` on the first ``DELAY_IMAGES``
  training images for the delayed ones."""
  import jaxsnn
  neuron = jaxsnn.SNM() if method.neuron == "SNM" else jaxsnn.IF()
  example = run.normalize(run.test.images[:1])
  if method.norm == "qcfs":
    # QCFS sites take their own lambda (convert's default); ReLU sites, if any, NeuronNorm.
    kinds = {n: k for n, k, _ in jaxsnn.convert(run.apply_fn, run.variables, example, jaxsnn.thresholds(stats),
                                                 neuron=neuron).site_kinds}
    th = {k: v for k, v in jaxsnn.thresholds(stats, "neuron").items() if kinds.get(k) == "relu"}
  elif method.tuned:
    th = jaxsnn.thresholds_for_steps(hist(), num_steps, method.potential or 0.0)
  else:
    th = jaxsnn.thresholds(stats, method.norm)
  snn = jaxsnn.convert(run.apply_fn, run.variables, example, th, neuron=neuron, initial_potential=method.potential)
  if method.calibrated:
    snn = jaxsnn.calibrate_snn(snn, list(calib_snn_batches), num_steps, progress=progress)
  if method.end_to_end:
    snn, _ = jaxsnn.tune_snn(snn, list(calibration_batches(run, TUNE_IMAGES, 128)), num_steps, steps=TUNE_STEPS,
                             progress=progress, checkpoint=tune_checkpoint)
  if method.delayed:
    snn, _ = jaxsnn.choose_readout_delay(snn, list(calibration_batches(run, DELAY_IMAGES, 128)),
                                         num_steps, progress=progress)
  return snn


class Job:
  """One network, its calibration statistics (training data only), and cached method results in a work dir.

  Every method's result is written atomically to ``work/<method>.json`` as soon as it is done, and its evaluation
  checkpoints every few batches (``jaxsnn.evaluate(checkpoint=...)``): the same command run again after a kill skips
  what is done and resumes the rest. A result for a larger T or the same settings is reused for a smaller T.
  """

  def __init__(self, run: Run, work, num_test: Optional[int], calib_examples: int, batch_size: int,
               calib_snn_examples: int = 256, block_size: Optional[int] = None, progress: bool = True):
    import jaxsnn
    self.run, self.work = run, pathlib.Path(work)
    self.test = first(run.test, num_test)
    self.batch_size, self.block_size, self.progress = batch_size, block_size, progress
    self.settings = {"test_images": int(len(self.test.labels)), "calibration_images": calib_examples,
                     "calibrate_snn_images": calib_snn_examples, "batch_size": batch_size}
    self.work.mkdir(parents=True, exist_ok=True)
    stats_file = self.work / f"stats_{calib_examples}.npz"
    if stats_file.exists():
      self.stats = jaxsnn.load_stats(stats_file)
    else:
      self.stats = jaxsnn.calibrate(run.apply_fn, run.variables, calibration_batches(run, calib_examples, batch_size))
      jaxsnn.save_stats(stats_file, self.stats)
    self._hist = None
    self.calib_examples = calib_examples
    self.calib_snn_batches = list(calibration_batches(run, calib_snn_examples, 128))

  @property
  def hist(self):
    import jaxsnn
    if self._hist is None:
      self._hist = jaxsnn.ratio_histograms(self.run.apply_fn, self.run.variables,
                                           calibration_batches(self.run, self.calib_examples, self.batch_size),
                                           self.stats)
    return self._hist

  def snn(self, method: Method, num_steps: int):
    """The converted (and, per the method, tuned and calibrated) network."""
    return make_snn(self.run, method, self.stats, num_steps, lambda: self.hist, self.calib_snn_batches,
                    progress=self.progress, tune_checkpoint=self._file(method).with_suffix(".tune.npz"))

  def _file(self, method: Method) -> pathlib.Path:
    slug = "".join(c if c.isalnum() else "_" for c in method.name.replace("θ/2", "half").replace("λ", "lambda"))
    # The test-set size is in the name: a 1,000-image run (the README's command) never overwrites a full-set result.
    return self.work / f"{slug}.{self.settings['test_images']}img.json"

  def cached(self, method: Method, num_steps: int) -> Optional[dict]:
    """The method's result if it is in the work dir for these settings and at least its T; else None."""
    steps = method.steps(num_steps)
    path = self._file(method)
    if path.exists():
      cached = json.loads(path.read_text())
      if cached["settings"] == self.settings and cached["steps"] >= steps:
        return _truncate(cached, steps)
    return None

  def result(self, method: Method, num_steps: int) -> dict:
    """The method's accuracy after every t <= its T, rates and energy at the recorded steps (cached)."""
    import jaxsnn
    cached = self.cached(method, num_steps)
    if cached is not None:
      return cached
    steps = method.steps(num_steps)
    path = self._file(method)
    t0 = time.time()
    snn = self.snn(method, steps)
    prepare_seconds = time.time() - t0
    t0 = time.time()
    if method.authors:
      res = self._authors(snn, steps)
    else:
      res = jaxsnn.evaluate(snn, eval_batches(self.run, self.test, self.batch_size), steps, self.block_size,
                            progress=self.progress, record_steps=[t for t in RECORD if t <= steps],
                            checkpoint=path.with_suffix(".progress.npz"))
    seconds = time.time() - t0
    out = {"name": method.name, "method": dataclasses.asdict(method), "settings": self.settings, "steps": steps,
           "accuracy": res["accuracy"].tolist(), "seconds": round(seconds, 1),
           "prepare_seconds": round(prepare_seconds, 1), "non_finite": res["non_finite"]}
    if method.delayed:
      out["readout_delay"] = int(snn.readout_delay)
    if res.get("recorded"):
      out["at"] = {}
      for t in res["recorded"]["steps"]:
        counts = jaxsnn.analysis.recorded_counts(res, t)
        e = jaxsnn.analysis.energy(snn, counts)
        e_avg = jaxsnn.analysis.energy(snn, counts, pooling="average")
        out["at"][str(t)] = {
            "average_firing_rate": jaxsnn.analysis.average_firing_rate(counts),
            "firing_rates": jaxsnn.analysis.firing_rates(counts),
            "positive_rates": jaxsnn.analysis.firing_rates(counts, sign="pos"),
            "negative_rates": jaxsnn.analysis.firing_rates(counts, sign="neg"),
            "energy_ratio": float(e.ratio), "energy_ratio_average_pooling": float(e_avg.ratio)}
    write_json(path, out)
    for suffix in (".progress.npz", ".tune.npz"):
      if path.with_suffix(suffix).exists():
        path.with_suffix(suffix).unlink()
    return out

  def _authors(self, snn, steps: int) -> dict:
    """The authors' protocol over the whole test set: slots of 256 from the test batches, then the train batches."""
    import jaxsnn
    import numpy as np
    slot = 256
    test_x = [x for x, _, m in eval_batches(self.run, self.test, slot) if np.asarray(m).all()]
    train_x = [x for x, _ in calibration_batches(self.run, self.calib_examples, slot) if len(x) == slot]
    slots = jaxsnn.authors_thresholds(self.run.apply_fn, self.run.variables, test_x + train_x)
    return jaxsnn.evaluate_authors(snn, eval_batches(self.run, self.test, slot), slots, steps, self.block_size,
                                   progress=self.progress)


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


def cost_table(report_: dict, steps: Sequence[int] = (4, 8, 16, 32)) -> str:
  """Markdown: per method, accuracy (%) / average firing rate / Eq. 15 energy ratio at each T; a method tuned for a
  target T fills only that column. The last row is the best per T, with the points lost against the ANN."""
  ann = report_["ann_accuracy"]
  head = "| method | " + " | ".join(f"T={t}: acc / rate / E" for t in steps) + " |"
  lines = [head, "|" + "---|" * (len(steps) + 1)]
  best = {t: (None, -1.0) for t in steps}
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
      if acc > best[t][1]:
        best[t] = (name, acc)
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines.append("| **best (points lost vs ANN)** | " + " | ".join(
      f"**{100 * a:.2f}** ({100 * (ann - a):+.2f})" if n else "" for n, a in best.values()) + " |")
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
