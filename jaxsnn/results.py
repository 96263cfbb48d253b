"""Results files: the schema of an accuracy-vs-T run, its cost summary, the choice of "the best recipe at T" on
validation images, the tables the reports print, and a work dir that caches one result per method.

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

import json
import pathlib
import time
from typing import Any, Callable, Sequence

from jaxsnn._src.activity import average_firing_rate, firing_rates, recorded_counts
from jaxsnn._src.cost import energy
from jaxsnn._src.evaluate import evaluate
from jaxsnn._src.files import write_json

RECORD = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
"""The steps at which a result records its cost (those up to its T)."""

__all__ = ["Cache", "RECORD", "chosen", "cost_at", "cost_table", "recipe_curves", "report", "table", "truncate"]


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


def chosen(report_: dict, steps: Sequence[int] = (4, 8, 16, 32)) -> dict:
  """``{T: (method name, test accuracy, validation accuracy)}``: at each T, the method with the best accuracy at T on
  the validation images (the first of equals), among the methods simulated to T (a method tuned for a target T
  competes at its target only; the authors' test-leaking protocol never). None where a candidate has no validation
  score: the test set never chooses.

  Args:
    report_: a report whose results carry ``"validation"`` scores.
    steps: the T to choose at.

  Returns:
    The choice at each T, or None.
  """
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


def table(report_: dict, steps: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128), with_cost: bool = True) -> str:
  """A markdown table: accuracy (%) after T steps, and (per method, at its largest shown T) rate and energy.

  Args:
    report_: a report.
    steps: the columns.
    with_cost: add the average firing rate and energy ratio at each method's last recorded T.

  Returns:
    The table, after a line with the ANN's accuracy.
  """
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
  """Markdown: per method, accuracy (%) / average firing rate / Eq. 15 energy ratio at each T (a method tuned for a
  target T fills only that column); then the method :func:`chosen` at each T on the validation images with its test
  accuracy and the points lost against the ANN, and, for reference only, the best test accuracy (which no rule may
  choose by).

  Args:
    report_: a report.
    steps: the columns.

  Returns:
    The table.
  """
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
      res = evaluate(snn, batches(), num_steps, block_size, progress=progress,
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
      res = evaluate(build(), batches(), num_steps, block_size, progress=progress)
      cached = {"images": images, "steps": num_steps, "accuracy": res.accuracy.tolist()}
      self.put(name, cached, images, "validation")
    return {"images": cached["images"], "accuracy": cached["accuracy"]}
