"""Results files: the schema of an accuracy-vs-T run, its cost summary, the choice of "the best recipe at T" on
validation images, the tables the reports print, a work dir that caches one result per method, and the study of one
trained network in such a work dir (:class:`Study`: its calibration data and statistics computed once, a cached,
resumable result per arm; ``experiments/common.py``'s ``Job`` is one, over the committed tables' arms).

What a user reproducing a committed table needs (``experiments/`` builds every results JSON with these)::

    result = {"accuracy": [0.50, 0.75], "validation": {"images": 10, "accuracy": [0.4, 0.8]}}
    out = jaxsnn.results.report(test_images=100, ann_accuracy=0.8, methods={"mine": result})
    assert jaxsnn.results.chosen(out, (2,)) == {2: ("mine", 0.75, 0.8)}   # chosen on the validation images
    print(jaxsnn.results.table(out, (1, 2), with_cost=False))

A *result* is one method's ``{"accuracy": [after t = 1..T], "at": {t: cost}, "validation": {"images", "accuracy"},
...}``; a *report* is ``{"test_images", "ann_accuracy", "methods": {name: result}, ...}`` (``experiments/main.py``'s
schema, which every committed accuracy-vs-T file follows).
"""

from __future__ import annotations

import functools
import json
import pathlib
import time
from typing import Any, Callable, Protocol, Sequence

from jaxsnn._src.activity import average_firing_rate, firing_rates, recorded_counts
from jaxsnn._src.calibrate import calibrate, load_stats, save_stats
from jaxsnn._src.cost import energy
from jaxsnn._src.evaluate import evaluate
from jaxsnn._src.files import write_json
from jaxsnn._src.recipes import SNN_CALIBRATION_EXAMPLES
from jaxsnn._src.thresholds import ratio_histograms

RECORD = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
"""The steps at which a result records its cost (those up to its T)."""

__all__ = ["Arm", "Cache", "RECORD", "Study", "chosen", "cost_at", "cost_table", "recipe_curves", "report", "table",
           "truncate"]


def cost_at(snn, evaluation) -> dict:
  """``{str(t): rates and Eq. 15 energy ratio}`` at every step an evaluation recorded: the cost summary of a result.

  Args:
    snn: the network that was evaluated.
    evaluation: its :class:`jaxsnn.Evaluation` with ``recorded`` steps (``evaluate(record_steps=...)``).

  Returns:
    Per recorded t: ``average_firing_rate``, ``firing_rates``, ``positive_rates``, ``negative_rates`` (per site),
    ``energy_ratio`` and ``energy_ratio_average_pooling`` (E_SNN / E_ANN, Eq. 15).
  """
  out = {}
  for t in evaluation.recorded.steps:
    counts = recorded_counts(evaluation, t)
    e = energy(snn, counts)
    e_avg = energy(snn, counts, pooling="average")
    out[str(t)] = {
        "average_firing_rate": average_firing_rate(counts),
        "firing_rates": firing_rates(counts),
        "positive_rates": firing_rates(counts, sign="pos"),
        "negative_rates": firing_rates(counts, sign="neg"),
        "energy_ratio": float(e.ratio), "energy_ratio_average_pooling": float(e_avg.ratio)}
  return out


def truncate(result: dict, num_steps: int) -> dict:
  """``result`` cut to its first ``num_steps`` steps (accuracy and cost).

  Args:
    result: one method's result.
    num_steps: T.

  Returns:
    A new result.
  """
  out = dict(result, steps=num_steps, accuracy=result["accuracy"][:num_steps])
  if "at" in result:
    out["at"] = {t: v for t, v in result["at"].items() if int(t) <= num_steps}
  return out


def report(*, methods: dict, ann_accuracy: float, pending: Sequence[str] = (), **about: Any) -> dict:
  """A results report in the committed schema.

  Args:
    methods: ``{name: result}``.
    ann_accuracy: the ANN's accuracy on the same test images.
    pending: methods not done yet (a partial report lists them under ``"pending"``; a complete one has no such key).
    **about: what the run was, in the file's order: ``checkpoint``, ``dataset``, ``model``, ``test_images`` (required
      by the schema), ``calibration_images``, ...

  Returns:
    ``{**about, "ann_accuracy", "methods"[, "pending"]}``.

  Raises:
    ValueError: without ``test_images``.
  """
  if "test_images" not in about:
    raise ValueError("jaxsnn.results.report: the schema needs test_images (how many test images the accuracies are "
                     "over).")
  out = {**about, "ann_accuracy": ann_accuracy, "methods": methods}
  if pending:
    out["pending"] = list(pending)
  return out


def chosen(report_: dict, num_steps_grid: Sequence[int] = (4, 8, 16, 32)) -> dict:
  """``{T: (method name, test accuracy, validation accuracy)}``: at each T, the method with the best accuracy at T on
  the validation images (the first of equals), among the methods simulated to T (a method tuned for a target T
  competes at its target only; the authors' test-leaking protocol never). None where a candidate has no validation
  score: the test set never chooses.

  Args:
    report_: a report whose results carry ``"validation"`` scores.
    num_steps_grid: the T to choose at.

  Returns:
    The choice at each T, or None.
  """
  out = {}
  for t in num_steps_grid:
    candidates = [(name, r) for name, r in report_["methods"].items()
                  if t <= len(r["accuracy"]) and r.get("method", {}).get("target") in (None, t)
                  and not r.get("method", {}).get("authors")]
    if not candidates or any("validation" not in r or t > len(r["validation"]["accuracy"]) for _, r in candidates):
      out[t] = None
      continue
    name, r = max(candidates, key=lambda nr: nr[1]["validation"]["accuracy"][t - 1])  # max keeps the first of equals
    out[t] = (name, r["accuracy"][t - 1], r["validation"]["accuracy"][t - 1])
  return out


def table(report_: dict, num_steps_grid: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128),
          with_cost: bool = True) -> str:
  """A markdown table: accuracy (%) after T steps, and (per method, at its largest shown T) rate and energy.

  Args:
    report_: a report.
    num_steps_grid: the columns (T values).
    with_cost: add the average firing rate and energy ratio at each method's last recorded T.

  Returns:
    The table, after a line with the ANN's accuracy.
  """
  shown = [t for t in num_steps_grid if any(len(r["accuracy"]) >= t for r in report_["methods"].values())]
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


def cost_table(report_: dict, num_steps_grid: Sequence[int] = (4, 8, 16, 32)) -> str:
  """Markdown: per method, accuracy (%) / average firing rate / Eq. 15 energy ratio at each T (a method tuned for a
  target T fills only that column); then the method :func:`chosen` at each T on the validation images with its test
  accuracy and the points lost against the ANN, and, for reference only, the best test accuracy (which no rule may
  choose by).

  Args:
    report_: a report.
    num_steps_grid: the columns (T values).

  Returns:
    The table.
  """
  ann = report_["ann_accuracy"]
  head = "| method | " + " | ".join(f"T={t}: acc / rate / E" for t in num_steps_grid) + " |"
  lines = [head, "|" + "---|" * (len(num_steps_grid) + 1)]
  oracle = {t: None for t in num_steps_grid}
  for name, r in report_["methods"].items():
    target = r["method"].get("target") if "method" in r else None
    cells = []
    for t in num_steps_grid:
      at = r.get("at", {}).get(str(t))
      if t > len(r["accuracy"]) or (target and target != t) or at is None:
        cells.append("")
        continue
      acc = r["accuracy"][t - 1]
      cells.append(f"{100 * acc:.2f} / {at['average_firing_rate']:.3f} / {at['energy_ratio']:.2f}")
      if not r.get("method", {}).get("authors") and (oracle[t] is None or acc > oracle[t]):
        oracle[t] = acc
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  picks = chosen(report_, num_steps_grid)
  images = {r["validation"]["images"] for r in report_["methods"].values() if "validation" in r}
  label = f"chosen on {images.pop():,} validation images" if len(images) == 1 else "chosen on validation images"
  lines.append(f"| **{label}: test % (points lost vs ANN)** | " + " | ".join(
      f"**{100 * p[1]:.2f}** ({100 * (ann - p[1]):+.2f}): {p[0]}" if p else "(no validation scores)"
      for p in picks.values()) + " |")
  lines.append("| best on the test set (reference only, not a choice) | " + " | ".join(
      f"{100 * a:.2f} ({100 * (ann - a):+.2f})" if a is not None else "" for a in oracle.values()) + " |")
  return "\n".join(lines)


def recipe_curves(report_: dict) -> dict:
  """``{recipe: {T: (accuracy, energy ratio)}}`` for :func:`jaxsnn.plotting.plot_recipes`: a method tuned for a
  target T is one point of its recipe (its name without " (T=...)"); a method simulated once gives every recorded T.

  Args:
    report_: a report.

  Returns:
    The curves.
  """
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


class Cache:
  """A work dir that keeps one result per method, written atomically as soon as it is done: a run killed and started
  again skips what is done. A result is reused when it was made with the same ``settings`` and at least the T asked
  for (cut to it); the image count is in the file name, so a small run never overwrites a full-set result.

  Args:
    work: the directory.
    settings: what a result must share to be reused (test images, calibration images, batch size, ...).
  """

  def __init__(self, work, settings: dict):
    self.work, self.settings = pathlib.Path(work), dict(settings)
    self.work.mkdir(parents=True, exist_ok=True)

  def path(self, name: str, images: int, split: str = "test") -> pathlib.Path:
    """Where the result of method ``name`` on ``images`` images of ``split`` (``"test"`` or ``"validation"``) is."""
    slug = "".join(c if c.isalnum() else "_" for c in name.replace("θ/2", "half").replace("λ", "lambda"))
    return self.work / (f"{slug}.{images}img.json" if split == "test" else f"{slug}.val{images}img.json")

  def get(self, name: str, num_steps: int, images: int, split: str = "test") -> dict | None:
    """The cached result if it has these settings (test results) and at least ``num_steps`` steps; else None."""
    path = self.path(name, images, split)
    if not path.exists():
      return None
    cached = json.loads(path.read_text())
    if split == "test" and cached.get("settings") != self.settings:
      return None
    if cached.get("steps", len(cached["accuracy"])) < num_steps:
      return None
    return truncate(cached, num_steps) if split == "test" else dict(cached, accuracy=cached["accuracy"][:num_steps])

  def put(self, name: str, result: dict, images: int, split: str = "test") -> None:
    """Writes a result atomically."""
    write_json(self.path(name, images, split), result)

  def seed(self, results: dict, images: int) -> None:
    """The test results of a committed report with these settings put in the work dir (so that only what is missing
    runs, e.g. the validation scores of a committed table)."""
    for name, r in results.items():
      path = self.path(name, images)
      if not path.exists() and r.get("settings") == self.settings:
        write_json(path, {k: v for k, v in r.items() if k != "validation"})

  def result(self, name: str, build: Callable[[], Any], batches: Callable[[], Any], num_steps: int, images: int, *,
             block_size: int | None = None, progress: bool = False, about: dict | None = None,
             run: Callable[[Any, Any], Any] | None = None) -> tuple[dict, Any]:
    """Method ``name``'s test result: the cached one, or ``build()`` the network, evaluate it on ``batches()`` (its
    accuracy after every t, its cost at the :data:`RECORD` steps; resumable from ``<result>.progress.npz``) and cache
    it.

    Args:
      name: the method.
      build: ``build() -> snn`` (timed as ``prepare_seconds``).
      batches: ``batches() -> labelled test batches``.
      num_steps: T.
      images: how many test images the batches hold.
      block_size: the schedule.
      progress: tqdm bars.
      about: more fields of the result (e.g. the method's options), or ``about(snn)`` if callable.
      run: ``run(snn, batches) -> Evaluation`` in place of :func:`jaxsnn.evaluate` (a comparison protocol).

    Returns:
      ``(result, snn)``; ``snn`` is None when the result came from the cache.
    """
    cached = self.get(name, num_steps, images)
    if cached is not None:
      return cached, None
    path = self.path(name, images)
    t0 = time.time()
    snn = build()
    prepare_seconds, t0 = time.time() - t0, time.time()
    if run is not None:
      res = run(snn, batches())
    else:
      res = evaluate(snn, batches(), num_steps, block_size=block_size, progress=progress,
                     record_steps=[t for t in RECORD if t <= num_steps], checkpoint=path.with_suffix(".progress.npz"))
    out = {"name": name, **((about(snn) if callable(about) else about) or {}), "settings": self.settings,
           "steps": num_steps, "accuracy": res.accuracy.tolist(), "seconds": round(time.time() - t0, 1),
           "prepare_seconds": round(prepare_seconds, 1), "non_finite": res.non_finite}
    if res.recorded is not None:
      out["at"] = cost_at(snn, res)
    self.put(name, out, images)
    path.with_suffix(".progress.npz").unlink(missing_ok=True)
    return out, snn

  def validation(self, name: str, build: Callable[[], Any], batches: Callable[[], Any], num_steps: int,
                 images: int, *, block_size: int | None = None, progress: bool = False) -> dict:
    """Method ``name``'s accuracy after every t on ``images`` validation images: cached, or ``build()`` the network
    and evaluate it on ``batches()``.

    Returns:
      ``{"images", "accuracy"}``.
    """
    cached = self.get(name, num_steps, images, "validation")
    if cached is None:
      res = evaluate(build(), batches(), num_steps, block_size=block_size, progress=progress)
      cached = {"images": images, "steps": num_steps, "accuracy": res.accuracy.tolist()}
      self.put(name, cached, images, "validation")
    return {"images": cached["images"], "accuracy": cached["accuracy"]}


class Arm(Protocol):
  """One row of a study (:class:`Study`): a named way to convert the network, run to ``steps(num_steps)`` (a recipe
  tuned for a target T runs to its target).

  Attributes:
    name: the row's name (the key of its result).
  """

  name: str

  def steps(self, num_steps: int) -> int:
    """The T this arm runs to when the study runs to ``num_steps``."""


class Study:
  """One trained network's conversion study in a work dir: what every row of an accuracy-vs-T table starts from,
  computed once and kept, and one cached result per row.

  The first ``calib_examples`` training images (the only data thresholds and every tool see) as batches in memory,
  their calibration statistics (``stats_<N>.jaxsnn`` in the work dir; an older ``stats_<N>.npz`` is read too), the
  ratio histograms (``histograms()``, computed when first asked for), the first ``num_test`` test images, and a
  :class:`Cache`: every arm's result is written as soon as it is done and its evaluation checkpoints, so the same job
  run again after a kill skips what is done and resumes the rest. With ``select`` validation images, every arm is also
  scored on the first ``select`` images of the validation split (the last training images, held out from training
  and from the thresholds): that, never the test set, chooses "the best recipe at T" (:func:`chosen`).

  A subclass says how an arm's network is built (:meth:`snn`), what its result records about it (:meth:`about`) and,
  for a comparison protocol, how it is evaluated (:meth:`evaluation`).

  Args:
    run: a :class:`jaxsnn.training.Run`.
    work: the work dir.
    num_test: test images (None: all).
    calib_examples: training images for the statistics and every tool.
    batch_size: examples per batch read.
    block_size: the simulation schedule (as in :func:`jaxsnn.simulate`).
    progress: tqdm bars.
    select: validation images that score every arm (0: none).

  Raises:
    ValueError: when ``select`` is more than the run holds out.
  """

  def __init__(self, run, work, num_test: int | None, calib_examples: int, batch_size: int,
               block_size: int | None = None, progress: bool = True, select: int = 0):
    self.run, self.work = run, pathlib.Path(work)
    self.test = run.test.first(num_test)
    self.batch_size, self.block_size, self.progress, self.select = batch_size, block_size, progress, select
    self.calib_examples = calib_examples
    self.settings = {"test_images": int(len(self.test.labels)), "calibration_images": calib_examples,
                     "calibrate_snn_images": SNN_CALIBRATION_EXAMPLES, "batch_size": batch_size}
    held_out = 0 if run.validation is None else len(run.validation.labels)
    if select > held_out:
      raise ValueError(f"select={select}: the run holds out {held_out} validation images")
    self.cache = Cache(work, self.settings)
    self.train = run.train_batches(calib_examples, batch_size)
    path = self.work / f"stats_{calib_examples}.jaxsnn"
    old = path.with_suffix(".npz")  # a work dir made before jaxsnn's file format
    if path.exists() or old.exists():
      self.stats = load_stats(path if path.exists() else old)
    else:
      self.stats = calibrate(run.apply_fn, run.variables, self.train, progress=progress)
      save_stats(path, self.stats)
    self.histograms = functools.cache(lambda: ratio_histograms(run.apply_fn, run.variables, self.train, self.stats,
                                                               progress=progress))

  def snn(self, arm: Arm, num_steps: int):
    """The arm's network for ``num_steps`` (a subclass builds it; the study caches what it measures)."""
    raise NotImplementedError(f"{type(self).__name__}.snn: say how an arm's network is built")

  def about(self, arm: Arm, snn) -> dict:
    """More fields of an arm's result (its options, its readout delay); ``snn`` is None for a comparison protocol."""
    return {}

  def evaluation(self, arm: Arm, num_steps: int) -> Callable[[Any, Any], Any] | None:
    """None (the arm's network is evaluated by :func:`jaxsnn.evaluate`), or a comparison protocol's
    ``run(snn, batches) -> Evaluation`` that builds and evaluates its own network (no validation score then)."""
    return None

  def batches(self, arrays):
    """Batches of ``arrays`` (normalised, in order, the last one padded and masked)."""
    return self.run.batches(arrays, self.batch_size)

  def path_of(self, arm: Arm, split: str = "test") -> pathlib.Path:
    """Where the arm's result on the test (or the validation) images is."""
    return self.cache.path(arm.name, self.settings["test_images"] if split == "test" else self.select, split)

  def scratch(self, arm: Arm) -> pathlib.Path:
    """A checkpoint file the arm's build may resume from (a tuning loop's); removed once the result is written."""
    return self.path_of(arm).with_suffix(".tune.npz")

  def cached(self, arm: Arm, num_steps: int) -> dict | None:
    """The arm's cached test result, if any (:meth:`Cache.get`)."""
    return self.cache.get(arm.name, arm.steps(num_steps), self.settings["test_images"])

  def seed(self, committed: dict) -> None:
    """A committed report's results put in the work dir (:meth:`Cache.seed`)."""
    self.cache.seed(committed, self.settings["test_images"])

  def validation(self, arm: Arm, num_steps: int, snn=None) -> dict:
    """The arm's accuracy after every t <= its T on the first ``select`` validation images (cached)."""
    steps = arm.steps(num_steps)
    held_out = lambda: self.batches(self.run.validation.first(self.select))  # noqa: E731
    return self.cache.validation(arm.name, lambda: snn or self.snn(arm, steps), held_out, steps, self.select,
                                 block_size=self.block_size, progress=self.progress)

  def result(self, arm: Arm, num_steps: int) -> dict:
    """The arm's accuracy after every t <= its T, rates and energy at the recorded steps (cached), and with
    ``select``, its validation accuracy."""
    steps = arm.steps(num_steps)
    protocol = self.evaluation(arm, steps)
    out, snn = self.cache.result(arm.name, lambda: None if protocol else self.snn(arm, steps),
                                 lambda: self.batches(self.test), steps, self.settings["test_images"],
                                 block_size=self.block_size, progress=self.progress,
                                 about=lambda snn: self.about(arm, snn), run=protocol)
    self.scratch(arm).unlink(missing_ok=True)
    if self.select and protocol is None:
      out = dict(out, validation=self.validation(arm, num_steps, snn))
    return out

  def report(self, methods: dict, ann_accuracy: float, pending: Sequence[str] = ()) -> dict:
    """The study's results report (:func:`report`): the checkpoint, dataset, model, image counts and ``methods``."""
    return report(checkpoint=self.run.name, dataset=self.run.config.dataset, model=self.run.config.model,
                  test_images=self.settings["test_images"], calibration_images=self.settings["calibration_images"],
                  ann_accuracy=ann_accuracy, methods=methods, pending=pending)
