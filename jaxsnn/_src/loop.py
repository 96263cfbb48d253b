"""The one optimisation loop of jaxsnn: an optimiser's iterations over batches cycled in epochs, the best iterate
chosen on validation data (or on the loss), a progress bar, and a resumable, fingerprinted checkpoint.

:func:`jaxsnn.tune_snn`, :func:`jaxsnn.finetune` and :func:`jaxsnn.quantize_for_conversion` are a jitted
``update(params, opt_state, batch) -> (params, opt_state, loss)`` and a way to score an iterate; this loop drives
them. :func:`jaxsnn.training.train_and_evaluate` is one more: its parameters are the network's variables (BatchNorm
statistics included), its learning-rate schedule lives in the optimiser's state, its batches are :class:`Epochs` (a
new shuffle and augmentation every epoch), and an ``on_epoch`` hook validates, scores and writes its metrics at the
end of every epoch. A non-finite loss stops the loop with :class:`NonFiniteLossError` naming the iteration and the
batch; the update that produced it is never applied, and the checkpoint (when there is one) keeps the state of the
iteration before.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsnn._src import checks, runner
from jaxsnn._src.files import Cadence, load_checkpoint, save_checkpoint


_FORMAT = "jaxsnn-loop-v1"  # what the checkpoint holds: a resumed job of another format is refused

class Epochs(NamedTuple):
  """Batches that change from epoch to epoch (a new shuffle, new augmentations), ``iterations_per_epoch`` of them in every
  epoch: ``of_epoch(epoch, start)`` yields the batches of epoch ``epoch`` from its ``start``-th on. A resumed loop
  asks for the batches it has not used yet and never makes the others (a plain iterable is read again from its start
  and the used batches skipped).

  Attributes:
    of_epoch: ``of_epoch(epoch, start) -> iterable`` of batches ``start .. iterations_per_epoch - 1`` of that epoch.
    iterations_per_epoch: batches in every epoch.
  """

  of_epoch: Callable[[int, int], Iterable[Any]]
  iterations_per_epoch: int


class EpochEnd(NamedTuple):
  """What an ``on_epoch`` hook of :func:`optimize` gets at the end of every epoch of :class:`Epochs`.

  Attributes:
    epoch: the epoch that ended (0-based).
    step: updates made so far (``(epoch + 1) * iterations_per_epoch``).
    params: the iterate after the epoch's last update.
    losses: the epoch's losses, one per update (float64; the whole epoch, also when the run resumed inside it).
    aux: ``{name: float64 [iterations_per_epoch]}``, the epoch's auxiliary outputs of ``update`` (``has_aux``).
    best_score: the best score before this epoch (-inf if none).
    seconds: wall time of the epoch's updates made in this session.
    session_steps: the epoch's updates made in this session (fewer than ``iterations_per_epoch`` after a resume).
  """

  epoch: int
  step: int
  params: Any
  losses: np.ndarray
  aux: dict
  best_score: float
  seconds: float
  session_steps: int


class NonFiniteLossError(ValueError):
  """A training loss became NaN or infinite.

  Attributes:
    iteration: the 1-based iteration whose loss was not finite (its update was not applied).
    batch: the batch's index within its epoch (0-based) and ``epoch`` its epoch.
    best: the best parameters so far (the chosen iterate of the iterations before), as the caller's function returns
      them.
  """

  def __init__(self, message: str, iteration: int, epoch: int, batch: int, best: Any = None):
    super().__init__(message)
    self.iteration, self.epoch, self.batch, self.best = iteration, epoch, batch, best


def cycle(batches: Iterable[Any] | Epochs, caller: str, name: str = "batches",
          start: int = 0) -> Iterator[tuple[int, int, Any]]:
  """``(epoch, index, batch)`` forever: the batches again and again (epochs). A re-iterable (a list, a dataset) is
  iterated afresh every epoch; a one-shot iterator (a generator) is read once and its batches kept in memory;
  :class:`Epochs` are asked for each epoch's batches, from the ``start``-th batch of the whole stream on.

  Raises:
    ValueError: when an epoch holds no batch, or :class:`Epochs` yield another number of batches than they promise.
  """
  if isinstance(batches, Epochs):
    per = batches.iterations_per_epoch
    epoch, index = divmod(start, per)
    while True:
      n = index
      for b in batches.of_epoch(epoch, index):
        if n == per:
          raise ValueError(f"{caller}: epoch {epoch} of the {name} holds more than the {per} batches its Epochs "
                           "promise.")
        yield epoch, n, b
        n += 1
      if n != per:
        raise ValueError(f"{caller}: epoch {epoch} of the {name} holds {n} batches; its Epochs promise {per}.")
      epoch, index = epoch + 1, 0
  if start:
    raise ValueError(f"{caller}: only Epochs start inside the stream")
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
  aux: dict | None = None  # {name: [value per step]} with has_aux

  def leaves(self):
    return jax.tree_util.tree_leaves((self.params, self.opt, self.best))


def optimize(update: Callable, params: Any, opt_state: Any, batches: Iterable[Any] | Epochs, steps: int, *,
             caller: str, prepare: Callable[[Any], Any], score: Callable[[Any], float] | None = None,
             score_every: int = 100, select: str = "score", round_size: int | None = None, has_aux: bool = False,
             on_epoch: Callable[[EpochEnd], float | None] | None = None, progress: bool = False,
             desc: str | None = None, examples_per_step: int | None = None, checkpoint=None,
             checkpoint_every: int | None = None, fingerprint: str | None = None,
             differs: str = "other network data, batches or settings",
             postfix: Callable[[dict], dict] | None = None) -> dict:
  """Runs ``steps`` updates over ``batches`` cycled in epochs; returns the chosen iterate.

  Args:
    update: ``update(params, opt_state, *prepared) -> (params, opt_state, loss)``, or with ``has_aux``
      ``-> (params, opt_state, loss, aux)`` (jitted by the caller, once: not per call).
    params: the starting parameters.
    opt_state: the optimiser's starting state.
    batches: the caller's batches (any iterable; cycled, see :func:`cycle`), or :class:`Epochs`.
    steps: updates to make (0: none, the start is returned).
    caller: the public function's name, for errors and the bar.
    prepare: ``prepare(batch) -> tuple`` of the arrays ``update`` takes after ``opt_state``; it validates the batch.
    score: ``score(params) -> float`` (higher is better): with ``select="score"``, measured at the start, every
      ``score_every`` steps and at the end; the best iterate is returned.
    score_every: steps between scores.
    select: ``"score"`` (the best score; without ``score`` or scores from ``on_epoch``: the last iterate), or
      ``"loss"`` (the lowest mean loss over a round of ``round_size`` steps, the iterate that starts the round's last
      step; the start's own round is measured with ``score`` given as ``-loss``).
    round_size: with ``select="loss"``: steps per round.
    has_aux: ``update`` also returns ``aux``, a dict of scalars (e.g. a batch's correct count), kept per step (in the
      checkpoint too) and given to ``on_epoch``.
    on_epoch: with :class:`Epochs`: ``on_epoch(EpochEnd) -> score or None``, called after every epoch's last update
      (then the checkpoint is written); a score (higher is better) enters the history and, with ``select="score"``,
      chooses the best iterate as ``score`` does.
    progress: a tqdm bar in steps (in examples with ``examples_per_step``).
    desc: the bar's label.
    examples_per_step: examples per update, for a bar in examples.
    checkpoint: a file path: the loop's state (step, optimiser state, iterate, best iterate, losses, history) is
      written atomically (see ``checkpoint_every``), at the end of every epoch of :class:`Epochs`, at the end,
      and before a :class:`NonFiniteLossError`; a call with the same ``fingerprint`` resumes from it (skipping the
      batches already used) and returns exactly what an uninterrupted call returns.
    checkpoint_every: steps between checkpoint writes; None (the default): once a minute of work.
    fingerprint: identifies the job (required with ``checkpoint``).
    differs: what may differ, for the refusal's message.
    postfix: ``postfix(info) -> dict`` for the bar (``info``: ``loss``, ``best``, ``epoch``).

  Returns:
    ``{"params": the chosen iterate, "last": the last iterate, "best_score", "losses": float64 [steps],
    "history": [(step, score), ...], "epochs": epochs begun, "aux": {name: float64 [steps]} (with has_aux)}``.

  Raises:
    NonFiniteLossError: when a loss is NaN or infinite.
    ValueError: for empty batches or a checkpoint of another job.
  """
  if select not in ("score", "loss"):
    raise ValueError(f"{caller}: select must be 'score' or 'loss'; got {select!r}.")
  if checkpoint is not None and fingerprint is None:
    raise TypeError(f"{caller}: a checkpoint needs a job fingerprint")
  if on_epoch is not None and not isinstance(batches, Epochs):
    raise TypeError(f"{caller}: on_epoch needs Epochs batches (whose epochs have a known end)")
  lower_is_better = select == "loss"
  cadence = Cadence(checks.checkpoint_every(checkpoint_every, caller))
  fingerprint = None if fingerprint is None else f"{fingerprint}/{_FORMAT}"
  state = _State(0, params, opt_state, params, -np.inf, [], [], {} if has_aux else None)
  like = state.leaves()
  treedef = jax.tree_util.tree_structure((params, opt_state, params))
  if checkpoint is not None:
    saved = load_checkpoint(checkpoint, fingerprint, caller, differs)
    if saved is not None:
      restored = [jnp.asarray(v, jnp.asarray(leaf).dtype) for v, leaf in zip(saved["leaves"], like)]
      p, o, b = jax.tree_util.tree_unflatten(treedef, restored)
      aux = {k: [float(x) for x in v] for k, v in saved["aux"].items()} if has_aux else None
      state = _State(int(saved["step"]), p, o, b, float(saved["best_score"]), [float(v) for v in saved["losses"]],
                     [tuple(h) for h in saved["history"]], aux)

  written = {"step": None}

  def save():
    if checkpoint is not None and written["step"] != (state.step, len(state.history)):
      written["step"] = (state.step, len(state.history))
      tree = {"step": state.step, "leaves": state.leaves(), "best_score": state.best_score,
              "losses": np.asarray(state.losses, np.float64), "history": [list(h) for h in state.history]}
      if has_aux:
        tree["aux"] = {k: np.asarray(v, np.float64) for k, v in state.aux.items()}
      save_checkpoint(checkpoint, fingerprint, tree)
      cadence.wrote()

  def record(value: float) -> None:
    state.history.append((state.step, value))
    if select == "score" and value > state.best_score:
      state.best_score, state.best = value, state.params

  def judge():
    if select != "score" or score is None:
      return
    record(float(score(state.params)))

  if not state.history and state.step == 0 and score is not None:
    if select == "score":
      judge()  # the start is a candidate
    else:
      state.best_score = float(score(state.params))  # -(its loss over a round)
  scale = examples_per_step or 1
  bar = runner.progress_bar(progress, desc or caller, unit="img" if examples_per_step else "step",
                            total=steps * scale, initial=state.step * scale)
  epochs = isinstance(batches, Epochs)
  per = batches.iterations_per_epoch if epochs else None
  start = state.step if epochs else 0  # Epochs jump to the first unused batch; other batches are read and skipped
  epoch = max(min(state.step, steps) - 1, 0) // per if epochs else 0
  clock, session_steps = time.perf_counter(), 0
  try:
    source = cycle(batches, caller, start=start)
    for i in range(start, steps):
      epoch, index, item = next(source)
      if i < state.step:
        continue  # used before the checkpoint
      args = prepare(item)
      out = update(state.params, state.opt, *args)
      params, opt, loss = out[:3]
      loss = float(loss)
      if not np.isfinite(loss):
        save()
        raise NonFiniteLossError(
            f"{caller}: the loss is {loss} at iteration {i + 1} (epoch {epoch}, batch {index} of the epoch); the "
            "update was not applied and the loop stopped" + (f" (the state before it is in {checkpoint!r})"
                                                      if checkpoint is not None else "")
            + ". Check that batch's inputs and labels, or lower the learning rate.", i + 1, epoch, index, state.best)
      state.losses.append(loss)
      if has_aux:
        for k, v in out[3].items():
          state.aux.setdefault(k, []).append(float(v))
      if select == "loss" and round_size and i + 1 >= round_size + 1:
        mean = float(np.mean(state.losses[-round_size:]))
        if -mean > state.best_score:
          state.best_score, state.best = -mean, state.params
      state.params, state.opt, state.step = params, opt, i + 1
      session_steps += 1
      if select == "score" and score is not None and state.step % score_every == 0:
        judge()
      epoch_done = epochs and index == per - 1
      if epoch_done and on_epoch is not None:
        first = epoch * per
        end = EpochEnd(epoch, state.step, state.params, np.asarray(state.losses[first:], np.float64),
                       {k: np.asarray(v[first:], np.float64) for k, v in (state.aux or {}).items()},
                       state.best_score, time.perf_counter() - clock, session_steps)
        value = on_epoch(end)
        if value is not None:
          record(float(value))
      if checkpoint is not None and (cadence.due(state.step) or epoch_done):
        save()
      if epoch_done:
        clock, session_steps = time.perf_counter(), 0
      if bar is not None:
        bar.update(scale)
        info = {"loss": f"{loss:.4g}"}
        if np.isfinite(state.best_score):
          info["best"] = f"{(-state.best_score if lower_is_better else state.best_score):.4g}"
        bar.set_postfix(postfix(dict(info, epoch=epoch)) if postfix else info)
  finally:
    if bar is not None:
      bar.close()
  if select == "score" and score is not None and (not state.history or state.history[-1][0] != state.step):
    judge()
  save()
  chosen = state.best if (select == "loss" or state.history) else state.params
  out = {"params": chosen, "last": state.params, "best_score": state.best_score,
         "losses": np.asarray(state.losses, np.float64), "history": list(state.history), "epochs": epoch + 1}
  if has_aux:
    out["aux"] = {k: np.asarray(v, np.float64) for k, v in state.aux.items()}
  return out
