"""Accuracy over a dataset: :func:`evaluate` streams batches through the simulator, resumable, and returns an
:class:`Evaluation`; :func:`accuracy_vs_time` scores one :class:`jaxsnn.Trace`; :func:`agreement` compares an SNN's
answer with its ANN's."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsnn._src import checks, ir, lowering, parallel, runner
from jaxsnn._src.batches import as_batch
from jaxsnn._src.convert import SpikingNetwork
from jaxsnn._src.files import fingerprint
from jaxsnn._src.simulate import Trace, check_batch, check_snn, finite_samples, simulate


class Recorded(NamedTuple):
  """Spike counts recorded at chosen steps (``evaluate(..., record_steps=...)``).

  Attributes:
    steps: the recorded steps t.
    pos: ``{site: int64 [len(steps), *site_shape]}``: each neuron's positive spikes over steps 1..t, summed over the
      examples, in network order.
    neg: the same for negative spikes.
  """

  steps: tuple
  pos: dict
  neg: dict


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """The result of :func:`evaluate`.

  Attributes:
    accuracy: float64 ``[T]``: ``accuracy[t - 1]`` is the fraction of examples answered right after t steps.
    correct: int64 ``[T]``: the counts behind it.
    count: examples evaluated (masked-out padding excluded).
    non_finite: examples whose input held a NaN or an infinity: their readout is NaN and they count as wrong.
    pos_spikes: ``{site: int}``: positive spikes summed over examples, neurons and steps, in network order; None
      unless ``tallies=True`` (for firing rates: divide by count, neurons and T).
    neg_spikes: the same for negative spikes.
    recorded: :class:`Recorded`, or None.
  """

  accuracy: np.ndarray
  correct: np.ndarray
  count: int
  non_finite: int
  pos_spikes: dict | None = None
  neg_spikes: dict | None = None
  recorded: Recorded | None = None

  @property
  def num_steps(self) -> int:
    return int(self.accuracy.shape[0])


def accuracy_vs_time(trace: Trace, labels: Any) -> jax.Array:
  """Top-1 accuracy after every number of steps t = 1..T, from one run.

  A sample whose readout is not finite (its input held a NaN or an infinity) counts as wrong, never as class 0.

  Args:
    trace: a :class:`Trace` whose outputs are ``[T, batch, classes]``.
    labels: integer labels ``[batch]`` or one-hot ``[batch, classes]``.

  Returns:
    ``[T]`` float array: the fraction of correct predictions after t steps.

  Raises:
    ValueError: if the labels are not integer class indices in ``[0, classes)`` (or one-hot), or do not match the
      outputs' batch or classes; names the offending values and how many there are.
  """
  caller = "jaxsnn.accuracy_vs_time"
  if not isinstance(trace, Trace):
    raise ValueError(f"{caller}: trace must be the jaxsnn.Trace that jaxsnn.simulate returns; got "
                     f"{type(trace).__name__}.")
  out = trace.outputs
  if out.ndim != 3:
    raise ValueError(f"{caller}: outputs must be [T, batch, classes]; got shape {out.shape}.")
  if isinstance(labels, jax.core.Tracer):
    raise ValueError(f"{caller}: labels are checked on the host (class indices in [0, classes)); call it outside "
                     "jit, or compare argmaxes yourself inside.")
  batch = as_batch((np.zeros((out.shape[1], 0), np.float32), labels), caller)
  runner.check_labels(batch.labels, out.shape[2], caller)
  return _hits(out, jnp.asarray(batch.labels)).mean(axis=1)


def _hits(outputs, labels):
  """``[T, batch]`` bool: the readout's argmax is the label and the readout is finite."""
  finite = jnp.isfinite(outputs).all(axis=-1)
  return (outputs.argmax(-1) == labels[None]) & finite


def _job(snn: SpikingNetwork, *settings) -> str:
  """What a resumed evaluation must share with the run that wrote the checkpoint."""
  # The kernels' lowering decides the float rounding: a checkpoint written under another one is not resumed.
  lowered = (lowering.SMALL_CONV_POSITIONS, jax.default_backend())
  return fingerprint(snn.traced.key, snn.neuron.name, snn.readout, str(snn.state_dtype), snn.fold, lowered, *settings,
                     arrays=(snn.variables, snn.thresholds, snn.initial_potential, snn.offsets, snn.readout_delay))


def evaluate(snn: SpikingNetwork, batches: Any, num_steps: int, *, block_size: int | None = None,
             exact: bool = True, tallies: bool = False, record_steps=(), progress: bool = False, checkpoint=None,
             checkpoint_every: int | None = None, mesh=None, micro_batch: int = runner.MICRO_BATCH,
             input_key: str = "image") -> Evaluation:
  """Accuracy after every t = 1..T over a whole dataset, streamed batch by batch, resumable.

  Args:
    snn: a converted network.
    batches: labelled batches in any form of the batch protocol (``(x, labels)``, ``(x, labels, mask)``, dicts
      ``{"image", "label", "mask"}`` as :func:`jaxsnn.data.batches` yields; ``mask`` marks the real examples of a
      padded batch). The same sequence every time the job runs (to resume).
    num_steps: time steps T.
    block_size: schedule, as in :func:`jaxsnn.simulate`.
    exact: as in :func:`jaxsnn.simulate`.
    tallies: also total every site's spikes (``Evaluation.pos_spikes`` / ``neg_spikes``); off by default, since
      accuracy alone runs faster without per-neuron counts.
    record_steps: steps t at which to total each neuron's spikes (``Evaluation.recorded``), for firing rates and
      energy at every recorded T from this one run.
    progress: a tqdm progress bar (images per second, the accuracy after T so far).
    checkpoint: a file path: progress is written there atomically (see ``checkpoint_every``), and a run
      that finds it (killed and started again with the same network, data order and arguments) skips the batches it
      covers, so the result equals an uninterrupted run's. A checkpoint of another job (other network data, T or
      arguments) is refused.
    checkpoint_every: micro-batch groups between checkpoint writes; None (the default): once a minute of work.
    mesh: a ``jax.sharding.Mesh`` to shard every batch over (its ``"batch"`` axis); default all local devices.
    micro_batch: examples per device in each simulation (as in :func:`jaxsnn.calibrate`: the result depends only on
      the examples, their order and ``micro_batch``, never on the batches' sizes, padding, masks or the devices).
    input_key: the input's key in dict batches.

  Returns:
    An :class:`Evaluation`. Examples whose input held a NaN or an infinity count as wrong, and a warning says how
    many there were.

  Raises:
    ValueError: for batches without labels, labels outside ``[0, classes)``, a bad batch (see
      :func:`jaxsnn.simulate`), a bad T, or a checkpoint of another job.

  Example:
    >>> ev = jaxsnn.evaluate(snn, data.batches(test, 200, train=False, mean=m, std=s), num_steps=64, progress=True)
    >>> ev.accuracy[-1]
  """
  caller = "jaxsnn.evaluate"
  check_snn(snn, caller)
  num_steps = checks.num_steps(num_steps, caller)
  record = checks.record_steps(record_steps, num_steps, caller)
  mesh = parallel.batch_mesh(mesh, caller)
  job = _job(snn, num_steps, block_size, exact, record, bool(tallies)) if checkpoint is not None else None
  replicated = parallel.replicate(mesh, snn)

  def run(p: runner.Prepared) -> Trace:
    return simulate(replicated, p.x, num_steps, block_size=block_size, exact=exact, record_steps=record,
                    sample_weights=p.device_mask, tallies=tallies)

  return stream_evaluation(run, snn, batches, num_steps, record=record, tallies=tallies, caller=caller, mesh=mesh,
                           micro_batch=micro_batch, progress=progress, checkpoint=checkpoint, fingerprint=job,
                           checkpoint_every=checkpoint_every, input_key=input_key)


def stream_evaluation(run: Callable[[runner.Prepared], Trace], snn: SpikingNetwork, batches: Any, num_steps: int, *,
                      record: tuple = (), tallies: bool = False, caller: str, mesh=None,
                      micro_batch: int = runner.MICRO_BATCH, progress: bool = False, checkpoint=None,
                      fingerprint: str | None = None, checkpoint_every: int | None = None,
                      input_key: str = "image") -> Evaluation:
  """The loop of :func:`evaluate` around any ``run(prepared_batch) -> Trace`` (the authors' protocol uses it too)."""
  init = {"correct": np.zeros(num_steps, np.int64), "count": 0, "non_finite": 0, "pos": {}, "neg": {},
          "rec_pos": {}, "rec_neg": {}}

  def step(state, p: runner.Prepared):
    check_batch(snn, p.x, caller)
    trace = run(p)
    finite = np.asarray(finite_samples(p.x))
    hits = np.asarray(_hits(trace.outputs, jnp.asarray(p.labels)))  # [T, B]
    state = dict(state)
    state["non_finite"] = int(state["non_finite"]) + int((~finite & p.mask).sum())
    state["correct"] = np.asarray(state["correct"], np.int64) + hits[:, p.mask].sum(axis=1)
    state["count"] = int(state["count"]) + p.count
    if tallies:
      for key, spikes in (("pos", trace.pos_spikes), ("neg", trace.neg_spikes)):
        state[key] = {site: int(state[key].get(site, 0)) + int(np.asarray(c)[p.mask].sum())
                      for site, c in spikes.items()}
    if record:
      for key, rec in (("rec_pos", trace.recorded["pos"]), ("rec_neg", trace.recorded["neg"])):
        state[key] = {site: np.asarray(state[key].get(site, 0), np.int64) + np.asarray(c, np.int64)
                      for site, c in rec.items()}
    return state

  state, count = runner.fold(
      batches, step, init, caller=caller, mesh=mesh, micro_batch=micro_batch, input_key=input_key,
      labels="accuracy", classes=checks.classes(snn.output_shape, caller), progress=progress,
      desc=f"SNN T={num_steps}", postfix=lambda s: {"acc": f"{s['correct'][-1] / max(s['count'], 1):.4f}"},
      checkpoint=checkpoint, fingerprint=fingerprint, checkpoint_every=checkpoint_every,
      differs="other network data, T, schedule or recorded steps")
  if count == 0:
    raise ValueError(f"{caller}: every example of the batches is masked out; nothing was evaluated.")
  if state["non_finite"]:
    warnings.warn(f"{caller}: {state['non_finite']} of {count} examples had a NaN or infinite input; their readout is "
                  "NaN and they count as wrong.", stacklevel=3)
  order = list(snn.site_names) + (["output"] if snn.readout == "spike" else [])
  ordered = lambda d: {k: d[k] for k in order if k in d}  # noqa: E731
  correct = np.asarray(state["correct"], np.int64)
  return Evaluation(
      accuracy=correct / count, correct=correct, count=count, non_finite=int(state["non_finite"]),
      pos_spikes=ordered(state["pos"]) if tallies else None, neg_spikes=ordered(state["neg"]) if tallies else None,
      recorded=Recorded(record, ordered(state["rec_pos"]), ordered(state["rec_neg"])) if record else None)


def agreement(snn: SpikingNetwork, batches: Any, num_steps: int, *, block_size: int | None = None,
              progress: bool = False, mesh=None, micro_batch: int = runner.MICRO_BATCH,
              input_key: str = "image") -> float:
  """The fraction of examples on which the SNN's answer after ``num_steps`` is its ANN's (argmax of the readout vs
  argmax of the ANN's logits): how faithful a conversion is, measured on unlabelled data (training images: no test
  set needed).

  Args:
    snn: a converted network.
    batches: batches in any form of the batch protocol; labels are not read.
    num_steps: T.
    block_size: the schedule (same answer).
    progress: a tqdm bar.
    mesh: as in :func:`evaluate`.
    micro_batch: as in :func:`evaluate`.
    input_key: the input's key in dict batches.

  Returns:
    A float in [0, 1].

  Example:
    >>> jaxsnn.agreement(snn, train_batches, num_steps=8)
  """
  caller = "jaxsnn.agreement"
  check_snn(snn, caller)
  num_steps = checks.num_steps(num_steps, caller)
  mesh = parallel.batch_mesh(mesh, caller)
  replicated = parallel.replicate(mesh, snn)
  variables = parallel.replicate(mesh, snn.variables)

  def step(hits, p: runner.Prepared):
    check_batch(snn, p.x, caller)
    want = np.asarray(ir.ann_outputs(snn.traced, variables, p.x)[1]).reshape(p.mask.shape[0], -1).argmax(-1)
    got = np.asarray(simulate(replicated, p.x, num_steps, block_size=block_size, tallies=False).outputs[-1])
    got = got.reshape(p.mask.shape[0], -1)
    same = (got.argmax(-1) == want) & np.isfinite(got).all(-1)
    return hits + int((same & p.mask).sum())

  hits, count = runner.fold(batches, step, 0, caller=caller, mesh=mesh, micro_batch=micro_batch,
                            input_key=input_key, finite="the agreement compares the SNN with its ANN",
                            progress=progress,
                            desc=f"agreement T={num_steps}")
  if count == 0:
    raise ValueError(f"{caller}: every example of the batches is masked out.")
  return hits / count
