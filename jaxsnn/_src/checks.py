"""Argument checks shared by the public functions: each raises a ``ValueError`` that names the function, the
argument, and what it got."""

from __future__ import annotations

import numpy as np


def positive_int(value, name: str, caller: str) -> int:
  """``value`` as an int, if it is a positive int (not a bool)."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{caller}: {name} must be a positive int; got {value!r} of type {type(value).__name__}.")
  if value <= 0:
    raise ValueError(f"{caller}: {name} must be a positive int (>= 1); got {value}.")
  return int(value)


def non_negative_int(value, name: str, caller: str) -> int:
  """``value`` as an int, if it is an int >= 0 (not a bool)."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise ValueError(f"{caller}: {name} must be a non-negative int; got {value!r}.")
  return int(value)


def num_steps(value, caller: str) -> int:
  """T, a positive int."""
  return positive_int(value, "num_steps", caller)


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
