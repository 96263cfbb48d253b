"""The one optimisation loop of jaxsnn: gradient steps over batches cycled in epochs, the best iterate chosen on
validation data (or on the loss), a progress bar, and a resumable, fingerprinted checkpoint.

:func:`jaxsnn.tune_snn`, :func:`jaxsnn.finetune` and :func:`jaxsnn.quantize_for_conversion` are a jitted
``update(params, opt_state, batch) -> (params, opt_state, loss)`` and a way to score an iterate; this loop drives
them. A non-finite loss stops the loop with :class:`NonFiniteLossError` naming the step and the batch; the update that
produced it is never applied, and the checkpoint (when there is one) keeps the state of the step before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxsnn._src import runner
from jaxsnn._src.files import load_checkpoint, save_checkpoint


_FORMAT = "jaxsnn-loop-v1"  # what the checkpoint holds: a resumed job of another format is refused


class NonFiniteLossError(ValueError):
  """A training loss became NaN or infinite.

  Attributes:
    step: the 1-based step whose loss was not finite (its update was not applied).
    batch: the batch's index within its epoch (0-based) and ``epoch`` its epoch.
    best: the best parameters so far (the chosen iterate of the steps before), as the caller's function returns them.
  """

  def __init__(self, message: str, step: int, epoch: int, batch: int, best: Any = None):
    super().__init__(message)
    self.step, self.epoch, self.batch, self.best = step, epoch, batch, best


def cycle(batches: Iterable[Any], caller: str, name: str = "batches") -> Iterator[tuple[int, int, Any]]:
  """``(epoch, index, batch)`` forever: the batches again and again (epochs). A re-iterable (a list, a dataset) is
  iterated afresh every epoch; a one-shot iterator (a generator) is read once and its batches kept in memory.

  Raises:
    ValueError: when an epoch holds no batch.
  """
  if isinstance(batches, Iterator):
    kept = []
    for i, b in enumerate(batches):
      kept.append(b)
      yield 0, i, b
    source = lambda: kept  # noqa: E731
    epoch = 1
  else:
    source = lambda: batches  # noqa: E731
    epoch = 0
  while True:
    n = -1
    for n, b in enumerate(source()):
      yield epoch, n, b
    if n < 0:
      raise ValueError(f"{caller}: {name} is empty; pass at least one batch.")
    epoch += 1


@dataclasses.dataclass
class _State:
  step: int
  params: Any
  opt: Any
  best: Any
  best_score: float
  losses: list
  history: list

  def leaves(self):
    return jax.tree_util.tree_leaves((self.params, self.opt, self.best))


def optimize(update: Callable, params: Any, opt_state: Any, batches: Iterable[Any], steps: int, *, caller: str,
             prepare: Callable[[Any], Any], score: Callable[[Any], float] | None = None, score_every: int = 100,
             select: str = "score", round_size: int | None = None, progress: bool = False, desc: str | None = None,
             checkpoint=None, checkpoint_every: int = 50, fingerprint: str | None = None,
             differs: str = "other network data, batches or settings",
             postfix: Callable[[dict], dict] | None = None) -> dict:
  """Runs ``steps`` updates over ``batches`` cycled in epochs; returns the chosen iterate.

  Args:
    update: ``update(params, opt_state, *prepared) -> (params, opt_state, loss)`` (jitted by the caller).
    params: the starting parameters.
    opt_state: the optimiser's starting state.
    batches: the caller's batches (any iterable; cycled, see :func:`cycle`).
    steps: updates to make (0: none, the start is returned).
    caller: the public function's name, for errors and the bar.
    prepare: ``prepare(batch) -> tuple`` of the arrays ``update`` takes after ``opt_state``; it validates the batch.
    score: ``score(params) -> float`` (higher is better): with ``select="score"``, measured at the start, every
      ``score_every`` steps and at the end; the best iterate is returned.
    score_every: steps between scores.
    select: ``"score"`` (the best score; without ``score``: the last iterate), or ``"loss"`` (the lowest mean loss
      over a round of ``round_size`` steps, the iterate that starts the round's last step; the start's own round is
      measured with ``score`` given as ``-loss``).
    round_size: with ``select="loss"``: steps per round.
    progress: a tqdm bar in steps.
    desc: the bar's label.
    checkpoint: a file path: the loop's state (step, optimiser state, iterate, best iterate, losses, history) is
      written atomically every ``checkpoint_every`` steps, at the end, and before a :class:`NonFiniteLossError`; a
      call with the same ``fingerprint`` resumes from it (skipping the batches already used) and returns exactly what
      an uninterrupted call returns.
    checkpoint_every: steps between checkpoint writes.
    fingerprint: identifies the job (required with ``checkpoint``).
    differs: what may differ, for the refusal's message.
    postfix: ``postfix(info) -> dict`` for the bar (``info``: ``loss``, ``best``).

  Returns:
    ``{"params": the chosen iterate, "last": the last iterate, "best_score", "losses": float64 [steps],
    "history": [(step, score), ...], "epochs": epochs begun, "examples": None}``.

  Raises:
    NonFiniteLossError: when a loss is NaN or infinite.
    ValueError: for empty batches or a checkpoint of another job.
  """
  if select not in ("score", "loss"):
    raise ValueError(f"{caller}: select must be 'score' or 'loss'; got {select!r}.")
  if checkpoint is not None and fingerprint is None:
    raise TypeError(f"{caller}: a checkpoint needs a job fingerprint")
  lower_is_better = select == "loss"
  fingerprint = None if fingerprint is None else f"{fingerprint}/{_FORMAT}"
  state = _State(0, params, opt_state, params, -np.inf, [], [])
  like = state.leaves()
  treedef = jax.tree_util.tree_structure((params, opt_state, params))
  if checkpoint is not None:
    saved = load_checkpoint(checkpoint, fingerprint, caller, differs)
    if saved is not None:
      restored = [jnp.asarray(v, jnp.asarray(leaf).dtype) for v, leaf in zip(saved["leaves"], like)]
      p, o, b = jax.tree_util.tree_unflatten(treedef, restored)
      state = _State(int(saved["step"]), p, o, b, float(saved["best_score"]), [float(v) for v in saved["losses"]],
                     [tuple(h) for h in saved["history"]])

  written = {"step": None}

  def save():
    if checkpoint is not None and written["step"] != (state.step, len(state.history)):
      written["step"] = (state.step, len(state.history))
      save_checkpoint(checkpoint, fingerprint, {
          "step": state.step, "leaves": state.leaves(), "best_score": state.best_score,
          "losses": np.asarray(state.losses, np.float64), "history": [list(h) for h in state.history]})

  def judge():
    if select != "score" or score is None:
      return
    value = float(score(state.params))
    state.history.append((state.step, value))
    if value > state.best_score:
      state.best_score, state.best = value, state.params

  if not state.history and state.step == 0 and score is not None:
    if select == "score":
      judge()  # the start is a candidate
    else:
      state.best_score = float(score(state.params))  # -(its loss over a round)
  bar = runner.progress_bar(progress, desc or caller, unit="step", total=steps, initial=state.step)
  epoch = 0
  try:
    source = cycle(batches, caller)
    for i in range(steps):
      epoch, index, item = next(source)
      if i < state.step:
        continue  # used before the checkpoint
      args = prepare(item)
      params, opt, loss = update(state.params, state.opt, *args)
      loss = float(loss)
      if not np.isfinite(loss):
        save()
        raise NonFiniteLossError(
            f"{caller}: the loss is {loss} at step {i + 1} (epoch {epoch}, batch {index} of the epoch); the update "
            "was not applied and the loop stopped" + (f" (the state before it is in {checkpoint!r})"
                                                      if checkpoint is not None else "")
            + ". Check that batch's inputs and labels, or lower the learning rate.", i + 1, epoch, index, state.best)
      state.losses.append(loss)
      if select == "loss" and round_size and i + 1 >= round_size + 1:
        mean = float(np.mean(state.losses[-round_size:]))
        if -mean > state.best_score:
          state.best_score, state.best = -mean, state.params
      state.params, state.opt, state.step = params, opt, i + 1
      if select == "score" and score is not None and state.step % score_every == 0:
        judge()
      if checkpoint is not None and state.step % checkpoint_every == 0:
        save()
      if bar is not None:
        bar.update(1)
        info = {"loss": f"{loss:.4g}"}
        if np.isfinite(state.best_score):
          info["best"] = f"{(-state.best_score if lower_is_better else state.best_score):.4g}"
        bar.set_postfix(postfix(info) if postfix else info)
  finally:
    if bar is not None:
      bar.close()
  if select == "score" and score is not None and (not state.history or state.history[-1][0] != state.step):
    judge()
  save()
  chosen = state.best if (score is not None or select == "loss") else state.params
  return {"params": chosen, "last": state.params, "best_score": state.best_score,
          "losses": np.asarray(state.losses, np.float64), "history": list(state.history), "epochs": epoch + 1}
