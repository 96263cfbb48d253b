"""Argument checks shared by the public functions: each raises a ``ValueError`` that names the function, the
argument, and what it got. Every public function validates through these, so that one kind of argument is checked
one way and explained in one wording.

One vocabulary (the words every public signature uses):

* ``num_steps``: T, the number of simulated time steps (``num_steps_grid``: several T, e.g. a figure's axis);
* ``iterations``: an optimiser's updates (``tune_snn``, ``finetune``, ``descend_thresholds``,
  ``quantize_for_conversion``);
* ``granularity``: how many values a ReLU site's neurons share, one of :data:`GRANULARITIES`, default
  :data:`DEFAULT_GRANULARITY`.
"""

from __future__ import annotations

import numpy as np

GRANULARITIES = ("neuron", "channel", "layer")
"""How many values (thresholds, threshold scales, corrections, λ) a site's neurons share: ``"neuron"`` (one per
neuron: the site's shape), ``"channel"`` (one per channel, the last axis; for a dense layer the same as per neuron)
or ``"layer"`` (one per site)."""
DEFAULT_GRANULARITY = "neuron"
"""The default granularity of every public function that takes one. Why per neuron: it is the paper's neuron-wise
normalisation (NeuronNorm, the method jaxsnn reproduces), and the one granularity that assumes nothing about which
neurons should share a value; channel and layer granularities trade resolution for fewer, better-estimated values, a
choice a recipe makes from measurements and passes explicitly (``jaxsnn.recipes``). A function whose statistic
cannot resolve single neurons has no default and asks for the choice (``thresholds_for_steps``)."""


def int_at_least(value, name: str, caller: str, low: int, what: str = "", high: int | None = None) -> int:
  """``value`` as an int, if it is an int (Python or NumPy, not a bool) in ``low..high``."""
  bounds = f"an int in {low}..{high}" if high is not None else {0: "a non-negative int", 1: "a positive int"}.get(
      low, f"an int >= {low}")
  why = f" ({what})" if what else ""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{caller}: {name} must be {bounds}{why}; got {value!r} of type {type(value).__name__}.")
  if value < low or (high is not None and value > high):
    raise ValueError(f"{caller}: {name} must be {bounds}{why}; got {value!r}.")
  return int(value)


def positive_int(value, name: str, caller: str, what: str = "") -> int:
  """``value`` as an int, if it is a positive int (not a bool)."""
  return int_at_least(value, name, caller, 1, what)


def non_negative_int(value, name: str, caller: str, what: str = "") -> int:
  """``value`` as an int, if it is an int >= 0 (not a bool)."""
  return int_at_least(value, name, caller, 0, what)


def checkpoint_every(value, caller: str) -> int | None:
  """A checkpoint cadence: a positive int (steps between writes), or None (every ``CHECKPOINT_SECONDS`` of work)."""
  return None if value is None else positive_int(value, "checkpoint_every", caller, "or None for the default cadence")


def num_steps(value, caller: str, what: str = "") -> int:
  """T, a positive int."""
  return positive_int(value, "num_steps", caller, what)


def optional_num_steps(value, caller: str, what: str = "") -> int | None:
  """T, a positive int, or None (any T)."""
  return None if value is None else num_steps(value, caller, what or "or None")


def iterations(value, caller: str, name: str = "iterations") -> int:
  """An optimiser's number of updates, an int >= 0 (0: the starting point is returned)."""
  return non_negative_int(value, name, caller, "an optimiser's updates")


def granularity(value, caller: str, allowed: tuple = GRANULARITIES, hint: str = "") -> str:
  """One of ``allowed`` (a subset of :data:`GRANULARITIES`), with ``hint`` saying where the others are."""
  if value not in allowed:
    known = "" if value in GRANULARITIES else f" (the granularities are {', '.join(map(repr, GRANULARITIES))})"
    raise ValueError(f"{caller}: granularity must be one of {allowed}; got {value!r}{known}." + (
        f" {hint}" if hint else ""))
  return value


def fraction_of_threshold(value, name: str, caller: str) -> float:
  """An initial potential as a fraction of the threshold, in [0, 1)."""
  if not np.isfinite(value) or not 0 <= value < 1:
    raise ValueError(f"{caller}: {name} must be a fraction of the threshold in [0, 1); got {value!r}.")
  return float(value)


def record_steps(steps, num_steps_: int, caller: str) -> tuple:
  """Sorted distinct steps t in ``1..num_steps``."""
  try:
    items = list(steps)
  except TypeError:
    raise ValueError(f"{caller}: record_steps must be an iterable of steps t; got {steps!r}.") from None
  record = tuple(sorted({positive_int(t, "record_steps entry", caller) for t in items}))
  if record and record[-1] > num_steps_:
    raise ValueError(f"{caller}: record_steps {record} go beyond num_steps={num_steps_}.")
  return record


def classes(output_shape: tuple, caller: str) -> int:
  """The number of classes of a network whose per-sample output has ``output_shape`` (its last axis)."""
  if len(output_shape) != 1:
    raise ValueError(f"{caller}: accuracy needs a network whose output is one vector of class scores per example; its "
                     f"per-example output has shape {tuple(output_shape)}.")
  return int(output_shape[0])
