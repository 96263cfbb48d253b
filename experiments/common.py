"""What the experiment scripts share: paths, the committed checkpoints, the named conversion arms (each one call of
:mod:`jaxsnn.recipes`) and the method lists. Every script in ``experiments/`` imports this module (``import common``)
and nothing from another script; the logic is library code (:mod:`jaxsnn.recipes`, :mod:`jaxsnn.results`: the results
schema, the study of a run in a work dir, the validation choice, the tables; :mod:`jaxsnn.training`: a trained run
with its data, the ANN's accuracy, the CPU allocator). Importing it puts the repository root on ``sys.path`` so that
``experiments.configs`` is importable from any working directory.
"""
from __future__ import annotations

import dataclasses
import pathlib
import sys
from typing import Any, Callable, Optional

import jaxsnn
from jaxsnn import data, files, results, training

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))  # experiments.configs.* import each other as a package

CHECKPOINTS = ROOT / "experiments" / "checkpoints"
DEFAULT_RUN = CHECKPOINTS / "fashion_mnist_small_cnn"
RUNS = ROOT / "experiments" / "runs"  # default output of scripts (ignored by git); committed results are elsewhere


def resolve_run(name_or_path) -> pathlib.Path:
  """A committed checkpoint name (``cifar10_resnet20``) or a path (a run directory or a checkpoint)."""
  path, committed = pathlib.Path(name_or_path), CHECKPOINTS / str(name_or_path)
  found = lambda p: any(p.with_name(p.name + s).exists() for s in (".jaxsnn", ".msgpack"))  # noqa: E731
  return committed if not path.exists() and not found(path) and found(committed) else path


Run, best_epoch = training.Run, training.best_epoch


def load_run(run, data_dir: Optional[str] = None) -> Run:
  """:func:`jaxsnn.training.load_run`, a missing checkpoint named as the ``--run`` flag's error."""
  try:
    return training.load_run(run, data_dir)
  except FileNotFoundError as e:
    raise SystemExit(f"--run: {e}") from None


# The library's, under the names the scripts use: first(arrays, n) (all for None), batches(run, arrays, batch_size),
# train_batches(run, num_examples, batch_size), ann_accuracy(run, arrays, batch_size), write_json(path, obj).
first, batches, train_batches, ann_accuracy = data.Arrays.first, Run.batches, Run.train_batches, Run.ann_accuracy
write_json = files.write_json


# ----------------------------------------------------------------------------------------------------------------
# Conversion methods and their evaluation (shared by main.py, paper.py and qcfs.py).
# ----------------------------------------------------------------------------------------------------------------

NORM_NAMES = {"neuron": "NeuronNorm", "layer": "LayerNorm", "channel": "ChannelNorm", "qcfs": "QCFS λ"}


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
  neuron = jaxsnn.SNM() if method.neuron == "SNM" else jaxsnn.IF()
  common = dict(neuron=neuron, stats=stats, check_examples=0, progress=progress)
  if method.authors:
    raise ValueError("build_snn: the authors' protocol has no recipe (it leaks the test set): see Job._authors")
  if method.norm == "qcfs":
    steps = num_steps if method.calibrated or method.delayed else None
    snn, _ = jaxsnn.recipes.quantized(run.apply_fn, run.variables, train, steps, snn_calibration=method.calibrated,
                                 readout_delay=method.delayed, **common)
  elif not (method.tuned or method.calibrated or method.end_to_end or method.delayed):
    snn, _ = jaxsnn.recipes.paper(run.apply_fn, run.variables, train, granularity=method.norm,
                                  initial_potential=method.potential or 0.0, **common)
  else:
    snn, _ = jaxsnn.recipes.low_latency(
        run.apply_fn, run.variables, train, num_steps, initial_potential=method.potential or 0.0,
        t_aware_thresholds=method.tuned, snn_calibration=method.calibrated, end_to_end=method.end_to_end,
        readout_delay=method.delayed, histograms=histograms() if method.tuned else None,
        tune_checkpoint=tune_checkpoint, **common)
  return snn


class Job(results.Study):
  """A run's study (:class:`jaxsnn.results.Study`) over :class:`Method`\\ s, each built by :func:`build_snn`."""

  def __init__(self, run: Run, work, num_test: Optional[int], calib_examples: int, batch_size: int,
               block_size: Optional[int] = None, progress: bool = True, select: int = 0):
    try:
      super().__init__(run, work, num_test, calib_examples, batch_size, block_size, progress, select)
    except ValueError as e:
      raise SystemExit(f"--{e}") from None

  def snn(self, method: Method, num_steps: int):
    return build_snn(self.run, method, num_steps, self.train, self.stats, self.histograms, progress=self.progress,
                     tune_checkpoint=self.scratch(method))

  def about(self, method: Method, snn) -> dict:
    return {"method": dataclasses.asdict(method), **({"readout_delay": int(snn.readout_delay)} if method.delayed
                                                     else {})}

  def evaluation(self, method: Method, num_steps: int):
    return (lambda _, __: self._authors(num_steps)) if method.authors else None

  def _authors(self, steps: int):
    """The authors' protocol over the whole test set: slots of 256 from the test batches, then the train batches."""
    slot = 256
    full = lambda arrays: [b for b in batches(self.run, arrays, slot) if b["mask"].all()]  # noqa: E731
    slots = jaxsnn.authors_protocol.thresholds(self.run.apply_fn, self.run.variables,
                                               full(self.test) + full(first(self.run.train, self.calib_examples)))
    return jaxsnn.authors_protocol.evaluate(self.snn(Method("SNM"), steps), batches(self.run, self.test, slot), slots,
                                            steps, block_size=self.block_size, progress=self.progress)


report = results.Study.report  # report(job, methods, ann_accuracy, pending=()): experiments/main.py's schema
# The report's tables and the validation choice are the library's (what a user reproducing a table calls too).
table, chosen, cost_table, cost_at = results.table, results.chosen, results.cost_table, results.cost_at
recipes = results.recipe_curves
use_tcmalloc = training.use_tcmalloc


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
