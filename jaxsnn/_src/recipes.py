"""Recipes: a trained ANN to an SNN in one call, composed of the library's stages, with a report of every choice.

A *stage* is a function ``(snn, batches) -> (snn, report)`` (:func:`jaxsnn.calibrate_snn`,
:func:`jaxsnn.choose_readout_delay` and :func:`jaxsnn.tune_snn` with their settings bound by ``functools.partial``);
:func:`chain` composes stages the way ``optax.chain`` composes gradient transformations. The recipes build the
network (calibration statistics, thresholds, conversion) and chain the stages their options switch on:

* :func:`paper`: the paper's method, SNM + NeuronNorm, every neuron starting at ``v = 0``;
* :func:`low_latency`: the measured stack for a target T: ``v0 = θ/2``, thresholds chosen for T, layer-wise SNN
  calibration, a readout delay (and optionally end-to-end tuning through the simulation);
* :func:`quantized`: a network with QCFS-quantised activations (trained with :class:`jaxsnn.models.QCFS`, or made by
  :func:`jaxsnn.quantize_for_conversion`), converted with its trained λ and ``v0 = θ/2``, calibrated and delayed at T;
* :func:`few_steps`: a trained ReLU network made a QCFS one (:func:`jaxsnn.quantize_for_conversion`), then
  :func:`quantized` at T, then optionally fine-tuned through the SNN.

Every recipe reads training batches only (any form of the batch protocol; a one-shot iterator is read once and kept
in memory, since the recipes read the data several times) and returns ``(snn, RecipeReport)``. The defaults are the
settings of every committed result: statistics from all the given batches, ``calibrate_snn`` on the first 256
examples, the readout delay and the agreement check on the first 1,024, in batches of 128. Each recipe passes the
granularity of every tool it calls explicitly (the measured choices: thresholds for T and the SNN calibration per
channel, QCFS λ per layer), whatever the tools' own default (``"neuron"``).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time
from collections.abc import Iterable, Iterator
from typing import Any, Callable

import numpy as np

from jaxsnn._src import checks, ir, norms
from jaxsnn._src.batches import as_batch, check_batches, take
from jaxsnn._src.calibrate import Stats, calibrate
from jaxsnn._src.convert import SpikingNetwork, conversion_note, convert
from jaxsnn._src.evaluate import agreement, evaluate
from jaxsnn._src.neurons import SNM, Neuron
from jaxsnn._src.quantize import quantize_for_conversion
from jaxsnn._src.readout import choose_readout_delay
from jaxsnn._src.reports import RecipeReport, Report
from jaxsnn._src.snn_calibration import calibrate_snn
from jaxsnn._src.thresholds import RatioHistograms, ratio_histograms, thresholds_for_steps
from jaxsnn._src.tuning import finetune, tune_snn

Stage = Callable[[SpikingNetwork, Any], tuple]
"""A stage: ``(snn, batches) -> (snn, report)``, the report a :class:`jaxsnn.Report` or a :class:`jaxsnn.RecipeReport`
(a chain of stages is a stage too)."""

SNN_CALIBRATION_EXAMPLES = 256  # calibrate_snn's training examples in every committed result
"""Training examples that the recipes' :func:`jaxsnn.calibrate_snn` stage reads (as in every committed result)."""
DELAY_EXAMPLES = 1024  # choose_readout_delay's (and the agreement check's)
"""Training examples that :func:`jaxsnn.choose_readout_delay` (and the agreement check) reads in the recipes."""
TUNE_EXAMPLES, TUNE_ITERATIONS = 1024, 200  # tune_snn's
"""Training examples and optimiser iterations of the recipes' :func:`jaxsnn.tune_snn` stage (``end_to_end=True``)."""
CALIBRATION_GRANULARITY = "channel"
"""The granularity of the recipes' :func:`jaxsnn.calibrate_snn` and :func:`jaxsnn.thresholds_for_steps` (one value per
channel: as measured in experiments/RESULTS.md and in every committed result)."""
BATCH_SIZE = 128
"""Batch size of the training subsets that the recipes' SNN stages read (the first examples, re-batched)."""


def _reports(report) -> tuple:
  """A stage's reports: a chain's are spliced in, so that chains nest and their reports stay flat."""
  if isinstance(report, RecipeReport):
    return tuple(report.stages)
  if isinstance(report, Report):
    return (report,)
  raise TypeError(f"jaxsnn.recipes.chain: a stage returned {type(report).__name__} as its report; a stage returns "
                  "(snn, jaxsnn.Report) or (snn, jaxsnn.RecipeReport).")


def chain(*stages: Stage, name: str = "chain", num_steps: int | None = None) -> Stage:
  """Composes stages ``(snn, batches) -> (snn, report)`` into one stage that runs them in order on the same batches.

  Closed, as ``optax.chain`` is: the result is a stage again, so chains nest, and every recipe is a chain.

  Args:
    *stages: stages, e.g. the library's tools with their settings bound by ``functools.partial``, wrapped by
      :func:`on_first` (a data subset) and :func:`checked` (the agreement with the ANN after the stage), or your own.
    name: the :class:`jaxsnn.RecipeReport`'s name.
    num_steps: the T it reports (None: any).

  Returns:
    A stage ``(snn, batches) -> (snn, RecipeReport)`` whose report lists every stage's report in order (a nested
    chain's reports spliced in).

  Example:
    >>> stage = jaxsnn.recipes.chain(functools.partial(jaxsnn.calibrate_snn, num_steps=8),
    ...                              functools.partial(jaxsnn.choose_readout_delay, num_steps=8))
    >>> snn, report = stage(snn, train_batches)
  """
  for i, stage in enumerate(stages):
    if not callable(stage):
      raise TypeError(f"jaxsnn.recipes.chain: stage {i} is not callable: {stage!r}; a stage is a function "
                      "(snn, batches) -> (snn, report).")

  def run(snn, batches):
    reports = []
    for stage in stages:
      snn, report = stage(snn, batches)
      reports.extend(_reports(report))
    return snn, RecipeReport(name, num_steps, tuple(reports))
  return run


def on_first(examples: int, stage: Stage, *, batch_size: int = BATCH_SIZE, input_key: str = "image") -> Stage:
  """``stage`` run on the first ``examples`` real examples of the batches, re-batched by ``batch_size`` (how the
  recipes give each tool its share of the training data).

  Args:
    examples: how many examples the stage reads.
    stage: the stage.
    batch_size: the batch size of the subset.
    input_key: the input's key in dict batches.

  Returns:
    A stage.

  Example:
    >>> calibration = jaxsnn.recipes.on_first(256, functools.partial(jaxsnn.calibrate_snn, num_steps=8))
  """
  examples = checks.positive_int(examples, "examples", "jaxsnn.recipes.on_first")

  def run(snn, batches):
    return stage(snn, take(batches, examples, batch_size, "jaxsnn.recipes.on_first", input_key))
  return run


def checked(stage: Stage, check: Callable[[SpikingNetwork], dict]) -> Stage:
  """``stage``, with ``check(snn)`` measured on the network it returns and written into its last report (fields of
  :class:`jaxsnn.Report`, e.g. ``{"agreement": ...}`` or ``{"validation_accuracy": ...}``), unless the stage measured
  them itself; the report's ``seconds`` is the stage's wall time when the stage left it at 0.

  Args:
    stage: the stage.
    check: ``check(snn) -> {field: value}``, e.g. :func:`agreement_check` or :func:`validation_check`.

  Returns:
    A stage.
  """
  def run(snn, batches):
    t0 = time.perf_counter()
    snn, report = stage(snn, batches)
    reports = list(_reports(report))
    seconds = time.perf_counter() - t0
    last = reports[-1]
    if not last.seconds:
      last = dataclasses.replace(last, seconds=seconds)
    measured = {k: v for k, v in check(snn).items() if getattr(last, k) is None}
    reports[-1] = dataclasses.replace(last, **measured)
    return snn, (reports[0] if len(reports) == 1 else RecipeReport("chain", report.num_steps, tuple(reports)))
  return run


def agreement_check(batches, num_steps: int, *, progress: bool = False, mesh=None) -> Callable:
  """A check for :func:`checked`: the SNN's agreement with its ANN after ``num_steps`` on ``batches``.

  Args:
    batches: training batches (labels are not read).
    num_steps: T.
    progress: a tqdm bar.
    mesh: as in :func:`jaxsnn.agreement`.

  Returns:
    ``check(snn) -> {"agreement": float}``.
  """
  return lambda snn: {"agreement": agreement(snn, batches, num_steps, progress=progress, mesh=mesh)}


def validation_check(batches, num_steps: int, *, input_key: str = "image") -> Callable:
  """A check for :func:`checked`: the SNN's accuracy after ``num_steps`` on labelled held-out ``batches``.

  Args:
    batches: labelled held-out batches (never the test set).
    num_steps: T.
    input_key: the input's key in dict batches.

  Returns:
    ``check(snn) -> {"validation_accuracy": float}``.
  """
  return lambda snn: {"validation_accuracy": float(evaluate(snn, batches, num_steps,
                                                            input_key=input_key).accuracy[-1])}


def low_latency_stages(num_steps: int, *, snn_calibration: bool = True, end_to_end: bool = False,
                       readout_delay: bool = True, snn_calibration_examples: int = SNN_CALIBRATION_EXAMPLES,
                       delay_examples: int = DELAY_EXAMPLES, tune_examples: int = TUNE_EXAMPLES,
                       tune_iterations: int = TUNE_ITERATIONS, tune_checkpoint=None, progress: bool = False,
                       mesh=None, input_key: str = "image") -> tuple:
  """The stages that :func:`low_latency` (and :func:`quantized`) run after the conversion, each on its share of the
  training data: layer-wise SNN calibration, optionally end-to-end tuning, the readout delay. Splice your own stage in
  and pass the tuple back as ``low_latency(..., stages=...)``, or chain them yourself.

  Args:
    num_steps: the target T.
    snn_calibration: :func:`jaxsnn.calibrate_snn` (per channel) on the first ``snn_calibration_examples`` examples.
    end_to_end: :func:`jaxsnn.tune_snn` on the first ``tune_examples`` for ``tune_iterations`` iterations.
    readout_delay: :func:`jaxsnn.choose_readout_delay` on the first ``delay_examples`` examples.
    snn_calibration_examples: see above.
    delay_examples: see above.
    tune_examples: see above.
    tune_iterations: see above.
    tune_checkpoint: ``tune_snn``'s checkpoint file.
    progress: tqdm bars.
    mesh: as in :func:`jaxsnn.calibrate`.
    input_key: the input's key in dict batches.

  Returns:
    The stages, in order.

  Example:
    >>> calib, delay = jaxsnn.recipes.low_latency_stages(8)
    >>> mine = lambda snn, batches: (snn, jaxsnn.Report("mine", {}))   # any (snn, batches) -> (snn, report)
    >>> snn, report = jaxsnn.recipes.low_latency(apply_fn, variables, train_batches, 8, stages=(calib, mine, delay))
  """
  num_steps = checks.num_steps(num_steps, "jaxsnn.recipes.low_latency_stages")
  stages = []
  if snn_calibration:
    stages.append(on_first(snn_calibration_examples, functools.partial(
        calibrate_snn, num_steps=num_steps, granularity=CALIBRATION_GRANULARITY, progress=progress, mesh=mesh),
        input_key=input_key))
  if end_to_end:
    stages.append(on_first(tune_examples, functools.partial(
        tune_snn, num_steps=num_steps, iterations=tune_iterations, progress=progress, checkpoint=tune_checkpoint,
        mesh=mesh), input_key=input_key))
  if readout_delay:
    stages.append(on_first(delay_examples, functools.partial(
        choose_readout_delay, num_steps=num_steps, progress=progress, mesh=mesh), input_key=input_key))
  return tuple(stages)


def _reusable(batches: Iterable[Any], caller: str):
  """``batches`` as something that can be read several times (a one-shot iterator is read once into a list)."""
  check_batches(batches, caller)
  if isinstance(batches, Iterator):
    return list(batches)
  return batches


def _first_input(batches, caller: str, input_key: str):
  for item in batches:
    return as_batch(item, caller, input_key).x
  raise ValueError(f"{caller}: train_batches is empty; pass training batches.")


def _neuron(neuron, caller):
  neuron = SNM() if neuron is None else neuron
  if not isinstance(neuron, Neuron):
    raise ValueError(f"{caller}: neuron must be a jaxsnn.neurons.Neuron (e.g. jaxsnn.SNM()); got {neuron!r}.")
  return neuron


def _noted(snn: SpikingNetwork, chose: dict) -> dict:
  """The convert stage's report says what the conversion left out of apply_fn (a final log_softmax)."""
  note = conversion_note(snn)
  return {**chose, "note": note} if note else chose


class _Recipe:
  """The running record of a recipe: its data subsets, its stage reports and the agreement check."""

  def __init__(self, name, batches, num_steps, check_examples, batch_size, progress, mesh, input_key):
    self.name, self.batches, self.num_steps = name, batches, num_steps
    self.progress, self.mesh, self.input_key = progress, mesh, input_key
    self.batch_size = batch_size
    self.check = None
    if num_steps is not None and check_examples:
      self.check = self.subset(check_examples)
    self.stages: list = []

  def subset(self, n: int) -> list:
    return take(self.batches, n, self.batch_size, f"jaxsnn.recipes.{self.name}", self.input_key)

  def agree(self, snn) -> float | None:
    if self.check is None:
      return None
    return agreement(snn, self.check, self.num_steps, progress=self.progress, mesh=self.mesh)

  def add(self, report: Report, snn=None, measure: bool = True) -> None:
    if measure and snn is not None and report.agreement is None:
      report = dataclasses.replace(report, agreement=self.agree(snn))
    self.stages.append(report)

  def report(self) -> RecipeReport:
    return RecipeReport(self.name, self.num_steps, tuple(self.stages))


def _stats(apply_fn, variables, batches, stats, rec: _Recipe, caller) -> Stats:
  t0 = time.perf_counter()
  if stats is None:
    stats = calibrate(apply_fn, variables, batches, mesh=rec.mesh, progress=rec.progress, input_key=rec.input_key)
  elif not isinstance(stats, Stats):
    raise ValueError(f"{caller}: stats must be jaxsnn.Stats from jaxsnn.calibrate; got {type(stats).__name__}.")
  rec.add(Report("calibrate", {"statistic": "per-neuron max"}, examples=stats.num_samples,
                 seconds=time.perf_counter() - t0), measure=False)
  return stats


def paper(apply_fn: Callable, variables: Any, train_batches: Iterable[Any], *, num_steps: int | None = None,
          neuron: Neuron | None = None, granularity: str = checks.DEFAULT_GRANULARITY, initial_potential: float = 0.0,
          readout: str = "membrane", stats: Stats | None = None, check_examples: int = DELAY_EXAMPLES,
          mesh=None, progress: bool = False, input_key: str = "image") -> tuple[SpikingNetwork, RecipeReport]:
  """The paper's method (Wang et al., IJCAI 2022): SNM neurons with NeuronNorm thresholds, every neuron at v = 0.

  Args:
    apply_fn: ``apply_fn(variables, x) -> logits`` of the trained ANN.
    variables: its variables.
    train_batches: training batches (any form of the batch protocol); never the test set.
    num_steps: a T at which to report the SNN's agreement with the ANN on the first ``check_examples`` training
      examples (None: no check; the network itself works at any T).
    neuron: the neuron (default SNM; ``jaxsnn.IF()`` for the paper's ablation).
    granularity: the thresholds' (:func:`jaxsnn.thresholds`): ``"neuron"`` (the default: NeuronNorm, the paper),
      ``"channel"`` or ``"layer"`` (LayerNorm, the paper's ablation).
    initial_potential: where every neuron starts, a fraction of its threshold (0: the paper).
    readout: ``"membrane"`` or ``"spike"`` (the output layer spiking, as the authors' code).
    stats: calibration statistics already computed on these batches (:func:`jaxsnn.calibrate`), to reuse.
    check_examples: training examples of the agreement check.
    mesh: as in :func:`jaxsnn.calibrate`.
    progress: tqdm bars.
    input_key: the input's key in dict batches.

  Returns:
    ``(snn, report)``.

  Raises:
    ValueError: for empty batches, an unknown granularity, a bad T, or what :func:`jaxsnn.convert` rejects.

  Example:
    >>> snn, report = jaxsnn.recipes.paper(apply_fn, variables, train_batches)
    >>> print(report)
  """
  caller = "jaxsnn.recipes.paper"
  num_steps = checks.optional_num_steps(num_steps, caller)
  checks.granularity(granularity, caller)
  train_batches = _reusable(train_batches, caller)
  rec = _Recipe("paper", train_batches, num_steps, check_examples, BATCH_SIZE, progress, mesh, input_key)
  stats = _stats(apply_fn, variables, train_batches, stats, rec, caller)
  t0 = time.perf_counter()
  snn = convert(apply_fn, variables, _first_input(train_batches, caller, input_key),
                norms.thresholds(stats, granularity), neuron=_neuron(neuron, caller), readout=readout,
                initial_potential=initial_potential)
  rec.add(Report("convert", _noted(snn, {"neuron": snn.neuron.name, "granularity": granularity,
                                        "initial_potential": initial_potential}),
                 examples=stats.num_samples, num_steps=num_steps, seconds=time.perf_counter() - t0), snn)
  return snn, rec.report()


def _chained(snn, rec: _Recipe, stages) -> SpikingNetwork:
  """The recipe's stages as one chain, each followed by the agreement check when the recipe has one."""
  if rec.check is not None:
    check = agreement_check(rec.check, rec.num_steps, progress=rec.progress, mesh=rec.mesh)
    stages = [checked(stage, check) for stage in stages]
  snn, report = chain(*stages, name=rec.name, num_steps=rec.num_steps)(snn, rec.batches)
  rec.stages.extend(report.stages)
  return snn


def low_latency(apply_fn: Callable, variables: Any, train_batches: Iterable[Any], num_steps: int, *,
                neuron: Neuron | None = None, initial_potential: float = 0.5, t_aware_thresholds: bool = True,
                snn_calibration: bool = True, readout_delay: bool = True, end_to_end: bool = False,
                stats: Stats | None = None, histograms: RatioHistograms | None = None,
                snn_calibration_examples: int = SNN_CALIBRATION_EXAMPLES, delay_examples: int = DELAY_EXAMPLES,
                tune_examples: int = TUNE_EXAMPLES, tune_iterations: int = TUNE_ITERATIONS, tune_checkpoint=None,
                stages: tuple | None = None, check_examples: int = DELAY_EXAMPLES, mesh=None,
                progress: bool = False, input_key: str = "image") -> tuple[SpikingNetwork, RecipeReport]:
  """jaxsnn's measured low-latency stack for a target T, every tool from training data (experiments/RESULTS.md,
  "Low latency"):

  1. NeuronNorm statistics (:func:`jaxsnn.calibrate`);
  2. thresholds chosen for T (:func:`jaxsnn.ratio_histograms` + :func:`jaxsnn.thresholds_for_steps`, per channel);
  3. conversion with every neuron starting at ``initial_potential * θ`` (θ/2: rounding instead of flooring);
  4. layer-wise SNN calibration at T (:func:`jaxsnn.calibrate_snn`, initial potentials per channel);
  5. optionally, end-to-end tuning through the simulation (:func:`jaxsnn.tune_snn`);
  6. the readout delay that agrees best with the ANN at T (:func:`jaxsnn.choose_readout_delay`).

  Each tool can be switched off. The report has, after every stage, the SNN's agreement with the ANN at T on the
  first ``check_examples`` training examples.

  Args:
    apply_fn: ``apply_fn(variables, x) -> logits`` of the trained ANN.
    variables: its variables.
    train_batches: training batches (any form of the batch protocol); never the test set.
    num_steps: the target T.
    neuron: the neuron (default SNM).
    initial_potential: where every neuron starts, a fraction of its threshold (0.5: θ/2).
    t_aware_thresholds: thresholds chosen for T (else NeuronNorm's maxima).
    snn_calibration: :func:`jaxsnn.calibrate_snn` on the first ``snn_calibration_examples`` examples.
    readout_delay: :func:`jaxsnn.choose_readout_delay` on the first ``delay_examples`` examples.
    end_to_end: :func:`jaxsnn.tune_snn` on the first ``tune_examples`` examples for ``tune_iterations`` iterations
      (resumable from ``tune_checkpoint``, a file path).
    stats: calibration statistics already computed on these batches, to reuse (several recipes on one network).
    histograms: :func:`jaxsnn.ratio_histograms` of these batches and ``stats``, to reuse.
    snn_calibration_examples: see above.
    delay_examples: see above.
    tune_examples: see above.
    tune_iterations: see above.
    tune_checkpoint: see above.
    stages: the stages after the conversion, in place of the ones the options above switch on: e.g.
      :func:`low_latency_stages` with a stage of your own spliced in (each stage is followed by the agreement check).
    check_examples: training examples of the agreement check (0: none).
    mesh: as in :func:`jaxsnn.calibrate`.
    progress: tqdm bars.
    input_key: the input's key in dict batches.

  Returns:
    ``(snn, report)``.

  Raises:
    ValueError: for a bad T or initial potential, empty batches, or what :func:`jaxsnn.convert` rejects.

  Example:
    >>> snn, report = jaxsnn.recipes.low_latency(apply_fn, variables, train_batches, num_steps=8)
    >>> print(report)            # what each stage chose, and the agreement with the ANN after it
    >>> jaxsnn.evaluate(snn, test_batches, num_steps=8).accuracy[-1]
  """
  caller = "jaxsnn.recipes.low_latency"
  num_steps = checks.num_steps(num_steps, caller, "the target T")
  checks.fraction_of_threshold(initial_potential, "initial_potential", caller)
  train_batches = _reusable(train_batches, caller)
  rec = _Recipe("low_latency", train_batches, num_steps, check_examples, BATCH_SIZE, progress, mesh, input_key)
  stats = _stats(apply_fn, variables, train_batches, stats, rec, caller)
  if t_aware_thresholds:
    t0 = time.perf_counter()
    if histograms is None:
      histograms = ratio_histograms(apply_fn, variables, train_batches, stats, granularity="neuron", mesh=mesh,
                                    progress=progress, input_key=input_key)
    th = thresholds_for_steps(histograms, num_steps, initial_potential, granularity=CALIBRATION_GRANULARITY)
    base = norms.thresholds(stats, granularity="neuron")
    scale = {k: float(np.sum(np.asarray(th[k], np.float64)) / max(np.sum(np.asarray(base[k], np.float64)), 1e-30))
             for k in th if k != ir.OUTPUT}
    rec.add(Report("thresholds_for_steps", {"granularity": CALIBRATION_GRANULARITY, "mean_scale": scale},
                   examples=histograms.num_samples, num_steps=num_steps, seconds=time.perf_counter() - t0),
            measure=False)
  else:
    th = norms.thresholds(stats, granularity="neuron")
  t0 = time.perf_counter()
  snn = convert(apply_fn, variables, _first_input(train_batches, caller, input_key), th,
                neuron=_neuron(neuron, caller), initial_potential=initial_potential)
  rec.add(Report("convert", _noted(snn, {"neuron": snn.neuron.name, "initial_potential": initial_potential}),
                 num_steps=num_steps, seconds=time.perf_counter() - t0), snn)
  if stages is None:
    stages = low_latency_stages(num_steps, snn_calibration=snn_calibration, end_to_end=end_to_end,
                                readout_delay=readout_delay, snn_calibration_examples=snn_calibration_examples,
                                delay_examples=delay_examples, tune_examples=tune_examples,
                                tune_iterations=tune_iterations,
                                tune_checkpoint=tune_checkpoint, progress=progress, mesh=mesh, input_key=input_key)
  snn = _chained(snn, rec, stages)
  return snn, rec.report()


def quantized(apply_fn: Callable, variables: Any, train_batches: Iterable[Any], num_steps: int | None = None, *,
              neuron: Neuron | None = None, snn_calibration: bool = True, readout_delay: bool = True,
              stats: Stats | None = None, snn_calibration_examples: int = SNN_CALIBRATION_EXAMPLES,
              delay_examples: int = DELAY_EXAMPLES, check_examples: int = DELAY_EXAMPLES, mesh=None,
              progress: bool = False, input_key: str = "image") -> tuple[SpikingNetwork, RecipeReport]:
  """A network with QCFS-quantised activations (Bu et al. 2022): trained with :class:`jaxsnn.models.QCFS`
  (:func:`jaxsnn.qcfs`, the activation), or made from a ReLU network by :func:`jaxsnn.quantize_for_conversion`. Each
  QCFS site takes its trained λ as threshold and starts at θ/2; ReLU sites, if any, take NeuronNorm's; with a target
  T, then layer-wise SNN calibration (per channel) and the readout delay at T (the best recipe of every committed QCFS
  result).

  Args:
    apply_fn: ``apply_fn(variables, x) -> logits`` of the QCFS ANN.
    variables: its variables.
    train_batches: training batches (any form of the batch protocol); never the test set.
    num_steps: the target T of the calibration and the delay (None: λ and θ/2 only, for any T).
    neuron: the neuron (default SNM).
    snn_calibration: :func:`jaxsnn.calibrate_snn` at T.
    readout_delay: :func:`jaxsnn.choose_readout_delay` at T.
    stats: calibration statistics already computed on these batches, to reuse.
    snn_calibration_examples: training examples of the SNN calibration.
    delay_examples: training examples of the readout delay.
    check_examples: training examples of the agreement check (0: none).
    mesh: as in :func:`jaxsnn.calibrate`.
    progress: tqdm bars.
    input_key: the input's key in dict batches.

  Returns:
    ``(snn, report)``.

  Raises:
    ValueError: for a network without QCFS activations.

  Example:
    >>> snn, report = jaxsnn.recipes.quantized(model.apply, variables, train_batches, num_steps=8)
  """
  caller = "jaxsnn.recipes.quantized"
  num_steps = checks.optional_num_steps(num_steps, caller)
  train_batches = _reusable(train_batches, caller)
  example = _first_input(train_batches, caller, input_key)
  program, _ = ir.trace(*ir.split_variables(apply_fn, variables), example, caller=caller)
  kinds = {s.name: s.kind for s in program.sites}
  if ir.QCFS not in kinds.values():
    raise ValueError(f"{caller}: the network has no QCFS activation (jaxsnn.models.QCFS / jaxsnn.qcfs); use "
                     "jaxsnn.recipes.low_latency for a ReLU network.")
  rec = _Recipe("quantized", train_batches, num_steps, check_examples, BATCH_SIZE, progress, mesh, input_key)
  th = {}
  if ir.RELU in kinds.values() or stats is not None:
    stats = _stats(apply_fn, variables, train_batches, stats, rec, caller)
    th = {k: v for k, v in norms.thresholds(stats, granularity="neuron").items() if kinds.get(k) == ir.RELU}
  t0 = time.perf_counter()
  snn = convert(apply_fn, variables, example, th, neuron=_neuron(neuron, caller))
  rec.add(Report("convert", _noted(snn, {"neuron": snn.neuron.name, "thresholds": "trained λ",
                                        "initial_potential": 0.5}),
                 num_steps=num_steps, seconds=time.perf_counter() - t0), snn)
  if num_steps is not None:  # both tools need a target T
    snn = _chained(snn, rec, low_latency_stages(
        num_steps, snn_calibration=snn_calibration, readout_delay=readout_delay,
        snn_calibration_examples=snn_calibration_examples, delay_examples=delay_examples, progress=progress,
        mesh=mesh, input_key=input_key))
  return snn, rec.report()


_quantized = quantized  # few_steps's argument ``quantized`` (a quantisation to reuse) hides the recipe's name there


def few_steps(apply_fn: Callable, variables: Any, train_batches: Iterable[Any], num_steps: int, *,
              validation: Iterable[Any], levels: int | None = None, iterations: int = 3000,
              iteration_batches: Iterable[Any] | None = None, loss: str = "distill", learning_rate: float = 1e-3,
              quantized: tuple | None = None, finetune_iterations: int = 0,
              finetune_batches: Iterable[Any] | None = None, finetune_learning_rate: float = 1e-4,
              finetune_loss: str = "labels", neuron: Neuron | None = None, snn_calibration: bool = True,
              readout_delay: bool = True,
              snn_calibration_examples: int = SNN_CALIBRATION_EXAMPLES, delay_examples: int = DELAY_EXAMPLES,
              check_examples: int = 0, checkpoint_dir=None, progress: bool = False,
              input_key: str = "image") -> tuple[SpikingNetwork, RecipeReport]:
  """A trained ReLU network to an SNN accurate at a few time steps: conversion-aware fine-tuning
  (:func:`jaxsnn.quantize_for_conversion`, one λ per layer), then :func:`quantized` at T (λ as thresholds, θ/2, SNN
  calibration per channel, readout delay), then optionally :func:`jaxsnn.finetune` through the SNN at T.

  Every stage's report carries the validation accuracy after it (the quantised ANN's, then the SNN's at T) and its
  time, so the report is the ablation of the path.

  Args:
    apply_fn: ``apply_fn(variables, x) -> logits`` of the trained ReLU ANN, any model style.
    variables: its variables.
    train_batches: finite training batches (never the test set): λ's calibration statistics and the SNN stages read
      them (and the quantisation's iterations, unless ``iteration_batches`` is given).
    num_steps: the target T.
    validation: labelled held-out batches (never the test set): the best iterates and every stage's score.
    levels: the QCFS levels L (default T).
    iterations: the quantisation's optimiser iterations.
    iteration_batches: the batches of those iterations (e.g. augmented epochs; default ``train_batches``).
    loss: the quantisation's loss (:data:`jaxsnn._src.quantize.LOSSES`).
    learning_rate: the quantisation's peak learning rate (Adam, cosine decay).
    quantized: ``(apply_q, variables_q, report)`` from :func:`jaxsnn.quantize_for_conversion`, to reuse (one
      quantisation for several T); the quantisation arguments above are then not used.
    finetune_iterations: iterations of :func:`jaxsnn.finetune` at T (0: none).
    finetune_batches: its batches (default ``iteration_batches``, else ``train_batches``; labelled for the labels
      loss).
    finetune_learning_rate: its Adam rate.
    finetune_loss: its loss (``"labels"`` or ``"ann"``: the quantised ANN's logits).
    neuron: the neuron (default SNM).
    snn_calibration: :func:`jaxsnn.calibrate_snn` at T.
    readout_delay: :func:`jaxsnn.choose_readout_delay` at T.
    snn_calibration_examples: training examples of the SNN calibration.
    delay_examples: training examples of the readout delay.
    check_examples: training examples of each stage's agreement check with the quantised ANN (0: none).
    checkpoint_dir: a directory for the resumable checkpoints of the quantisation (``quantize_L{levels}.npz``) and the
      fine-tuning (``finetune_L{levels}_T{T}_i{iterations}.npz``; None: none).
    progress: tqdm bars.
    input_key: the input's key in dict batches.

  Returns:
    ``(snn, report)``: the stages ``quantize_for_conversion``, ``convert``, ``calibrate_snn``, ``readout_delay``,
    ``finetune`` (those that ran), each with ``validation_accuracy`` and ``seconds``.

  Raises:
    ValueError: for a bad T, empty batches, or what the stages reject.

  Example:
    >>> snn, report = jaxsnn.recipes.few_steps(apply_fn, variables, train_batches, 4, validation=val_batches,
    ...                                        iteration_batches=augmented_epochs, iterations=3000)
    >>> print(report)
  """
  caller = "jaxsnn.recipes.few_steps"
  num_steps = checks.num_steps(num_steps, caller, "the target T")
  train_batches = _reusable(train_batches, caller)
  validation = list(_reusable(validation, f"{caller}: validation"))
  folder = None if checkpoint_dir is None else pathlib.Path(checkpoint_dir)
  if folder is not None:
    folder.mkdir(parents=True, exist_ok=True)
  rec = _Recipe("few_steps", train_batches, num_steps, check_examples, BATCH_SIZE, progress, None, input_key)

  validate = validation_check(validation, num_steps, input_key=input_key)
  if quantized is None:
    levels = num_steps if levels is None else levels
    quantized = quantize_for_conversion(
        apply_fn, variables, train_batches if iteration_batches is None else iteration_batches, levels=levels,
        iterations=iterations, validation=validation, loss=loss, learning_rate=learning_rate, granularity="layer",
        calibration=train_batches, progress=progress,
        checkpoint=None if folder is None else folder / f"quantize_L{levels}.npz", input_key=input_key)
  apply_q, variables_q, q_report = quantized
  rec.add(dataclasses.replace(q_report, validation_accuracy=q_report.chose.get("best_validation_accuracy")),
          measure=False)
  snn, converted = _quantized(apply_q, variables_q, train_batches, None, neuron=neuron, check_examples=0,
                              progress=progress, input_key=input_key)
  rec.add(dataclasses.replace(converted.stage("convert"), num_steps=num_steps, **validate(snn)), snn)
  stages = [checked(stage, validate) for stage in low_latency_stages(
      num_steps, snn_calibration=snn_calibration, readout_delay=readout_delay,
      snn_calibration_examples=snn_calibration_examples, delay_examples=delay_examples, progress=progress,
      input_key=input_key)]
  if finetune_iterations:
    batches = finetune_batches or iteration_batches or train_batches
    checkpoint = None if folder is None else folder / (
        f"finetune_L{apply_q.levels}_T{num_steps}_i{finetune_iterations}.npz")

    def fine_tuned(snn, _):  # its own batches; it chose its iterate on the validation batches already
      snn, report = finetune(snn, batches, num_steps, iterations=finetune_iterations,
                             learning_rate=finetune_learning_rate,
                             loss=finetune_loss, validation=validation, progress=progress, checkpoint=checkpoint,
                             input_key=input_key)
      return snn, dataclasses.replace(report, validation_accuracy=report.chose["best_validation_accuracy"])
    stages.append(fine_tuned)
  snn = _chained(snn, rec, stages)
  return snn, rec.report()
