"""What a tool or a recipe did: one typed report for every function that returns ``(snn, report)``."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class Report:
  """What one tool chose for a network, from which data.

  Every tool that returns a network (:func:`jaxsnn.calibrate_snn`, :func:`jaxsnn.choose_readout_delay`,
  :func:`jaxsnn.tune_snn`, the stages of :mod:`jaxsnn.recipes`) returns ``(snn, report)``.

  Attributes:
    tool: the tool's name (``"calibrate_snn"``, ``"readout_delay"``, ...).
    chose: what it chose, as plain values (e.g. ``{"readout_delay": 6}``, ``{"target": "potential"}``).
    examples: training examples it read.
    num_steps: the T it worked for (None if it has none).
    agreement: the fraction of examples on which the SNN's answer after ``num_steps`` is its ANN's, after the tool
      (None where not measured).
    details: larger results (arrays: the agreement of every readout delay, the losses of tuning, ...).
    seconds: wall time.
    validation_accuracy: the accuracy on held-out validation images after the tool, at ``num_steps`` for an SNN
      (None where not measured; :func:`jaxsnn.recipes.few_steps` measures it after every stage).
  """

  tool: str
  chose: Mapping[str, Any]
  examples: int = 0
  num_steps: int | None = None
  agreement: float | None = None
  details: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  seconds: float = 0.0
  validation_accuracy: float | None = None

  def line(self) -> str:
    """One line: the tool, what it chose, the agreement."""
    chose = ", ".join(f"{k}={_short(v)}" for k, v in self.chose.items())
    agree = "" if self.agreement is None else f"; agreement with the ANN {100 * self.agreement:.2f} %"
    if self.validation_accuracy is not None:
      agree += f"; validation accuracy {100 * self.validation_accuracy:.2f} %"
    steps = "" if self.num_steps is None else f" (T={self.num_steps})"
    return f"{self.tool}{steps}: {chose or '-'}{agree} [{self.examples} examples, {self.seconds:.1f} s]"

  def __str__(self):
    return self.line()


@dataclasses.dataclass(frozen=True)
class RecipeReport:
  """What a recipe of :mod:`jaxsnn.recipes` did, stage by stage.

  Attributes:
    recipe: the recipe's name.
    num_steps: the T it was built for (None: any T).
    stages: one :class:`Report` per stage, in order.
  """

  recipe: str
  num_steps: int | None
  stages: tuple

  def __iter__(self):
    """The stages' reports in order (``snn, (calibration, delay) = chain(a, b)(snn, batches)`` unpacks them)."""
    return iter(self.stages)

  def __len__(self) -> int:
    return len(self.stages)

  def __getitem__(self, i):
    return self.stages[i]

  @property
  def agreement(self) -> float | None:
    """The agreement with the ANN after the last stage that measured it."""
    return next((s.agreement for s in reversed(self.stages) if s.agreement is not None), None)

  def stage(self, tool: str) -> Report:
    """The report of the stage named ``tool``.

    Raises:
      KeyError: if the recipe ran no such stage.
    """
    for s in self.stages:
      if s.tool == tool:
        return s
    raise KeyError(f"{self.recipe}: no stage {tool!r}; stages: {[s.tool for s in self.stages]}")

  def __str__(self):
    head = f"{self.recipe}" + ("" if self.num_steps is None else f" at T={self.num_steps}")
    return "\n".join([head] + [f"  {i + 1}. {s.line()}" for i, s in enumerate(self.stages)])


def _short(value) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  if isinstance(value, Mapping):
    return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in list(value.items())[:4]) + (
        ", ..." if len(value) > 4 else "") + "}"
  return str(value)
