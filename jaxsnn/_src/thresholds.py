"""Thresholds for a target number of time steps: the expected quantisation error of the training activations at T,
and thresholds that minimise it.

The rate of a neuron after T steps quantises its ANN activation. With threshold ``theta``, initial potential
``p * theta`` and (to first order) a constant input current ``a``, the neuron sends ``n = clip(floor(a T / theta + p),
0, T)`` spikes, so it represents ``q(a) = theta n / T``: with ``p = 0`` it floors (everything below ``theta / T`` is
lost, the paper's Eq. 12), with ``p = 1/2`` it rounds (zero expected error, Bu et al. 2022), and everything above
``theta (1 - p / T)`` is clipped. The paper's Eq. 12-13 count only the two ends; the squared error ``(a - q(a))^2``
over the training activations counts the rounding in between too, and is what :func:`thresholds_for_steps` minimises
at the target T:

1. :func:`ratio_histograms`: one pass over training batches records, per site and channel, a histogram of every
   positive activation divided by its neuron's base threshold (``r = a / base``, base = NeuronNorm's max by
   default, so ``r`` is in ``[0, 1]`` on the calibration data), each weighted by ``base^2``, with the first and
   second moments of ``r`` in every bin, so that it gives the expected squared error of any scale ``s`` of the base
   thresholds at any T and ``p``: exactly for the bins that lie within one quantisation level, and, for the few bins
   that straddle a level boundary, with all their activations at the bin's mean;
2. :func:`thresholds_for_steps`: per channel (or per layer) the scale ``s`` on a grid that minimises that error;
   thresholds ``s * base``.

:func:`descend_thresholds` is the differentiable variant: gradient descent (``jax.grad`` + optax) of a relaxed
version of the same error (:func:`relaxed_quantization_error`, the floor replaced by a sum of sigmoids) w.r.t.
per-neuron, per-channel or per-layer thresholds, on activations held in memory.

Granularities, here as everywhere in jaxsnn: ``"neuron"`` (the default), ``"channel"`` (per channel, the last
axis), ``"layer"`` (one value per site); see :mod:`jaxsnn._src.checks`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Mapping
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsnn._src import checks, ir, parallel, runner
from jaxsnn._src.calibrate import Stats
from jaxsnn._src.checks import DEFAULT_GRANULARITY
from jaxsnn._src.files import fingerprint
from jaxsnn._src.ir import OUTPUT
from jaxsnn._src.norms import normalize
from jaxsnn._src.jitting import jit
from jaxsnn._src.reports import Report

RATIO_BINS = 4096
"""Number of bins of :func:`ratio_histograms` over [0, 1] (each positive activation divided by its neuron's max)."""
DEFAULT_SCALES = tuple(np.round(np.linspace(0.02, 1.0, 99), 4).tolist())
"""The scales of the NeuronNorm thresholds (0.02, 0.03, ..., 1.0) that :func:`thresholds_for_steps` tries."""


class RatioHistograms(NamedTuple):
  """Histograms of normalised activations, from :func:`ratio_histograms`.

  Attributes:
    counts: ``{site: float64 [3, channels, RATIO_BINS]}``: ``[k, c, b]`` holds the sum of ``base^2 * r^k``
      (``k = 0, 1, 2``) over the positive activations ``a`` of channel ``c`` with ``r = a / base`` in
      ``[b, b + 1) / RATIO_BINS`` (the last bin also holds everything above 1).
    base: ``{site: array of the site's shape}``: the base thresholds (``jaxsnn.thresholds(stats, granularity)``),
      and ``"output"``.
    granularity: the granularity of the base thresholds.
    num_samples: samples seen.
  """

  counts: dict
  base: dict
  granularity: str
  num_samples: int


def _channels(shape) -> int:
  return int(shape[-1]) if len(shape) else 1


@functools.partial(jit, static_argnums=(0, 5))
def _ratio_step(traced: ir.Traced, variables, x, mask, base, groups: int):
  """``{site: [groups, 3, channels, RATIO_BINS]}``: the moments of each micro-batch (added in order on the host:
  float sums, so that one device and many make the same additions)."""
  rec, _ = ir.ann_pass(traced, variables, x)
  out = {}
  for name, a in rec.items():
    b = base[name]
    rows = mask.reshape((-1,) + (1,) * (a.ndim - 1))
    valid = rows & (a > 0) & (b > 0)
    r = a / jnp.where(b > 0, b, 1).astype(a.dtype)
    bins = jnp.clip(jnp.floor(r * RATIO_BINS), 0, RATIO_BINS - 1).astype(jnp.int32)
    channel = jnp.broadcast_to(jnp.arange(a.shape[-1], dtype=jnp.int32), a.shape)
    weight = jnp.where(valid, jnp.broadcast_to(jnp.square(b.astype(jnp.float32)), a.shape), 0.0)
    r = jnp.where(valid, r, 0).astype(jnp.float32)
    index = (channel * RATIO_BINS + bins).reshape(groups, -1)
    length = a.shape[-1] * RATIO_BINS

    def moments(index, weight, r):
      return jnp.stack([jnp.bincount(index, weight * r ** k, length=length) for k in range(3)])

    out[name] = jax.vmap(moments)(index, weight.reshape(groups, -1), r.reshape(groups, -1)).reshape(
        groups, 3, a.shape[-1], RATIO_BINS)
  return out


def ratio_histograms(apply_fn: Callable, variables: Any, batches: Iterable[Any], stats: Stats,
                     granularity: str = DEFAULT_GRANULARITY, *, mesh=None, progress: bool = False, checkpoint=None,
                     checkpoint_every: int | None = None, micro_batch: int = runner.MICRO_BATCH,
                     input_key: str = "image") -> RatioHistograms:
  """One pass over training batches: the statistic :func:`thresholds_for_steps` needs.

  Args:
    apply_fn: the ANN's apply function (as given to :func:`jaxsnn.calibrate`).
    variables: its variables.
    batches: training batches in any form of the batch protocol (as for :func:`jaxsnn.calibrate`); the same or
      other training data than the calibration pass. Never the test set.
    stats: from :func:`jaxsnn.calibrate`: the per-neuron maxima that make the base thresholds.
    granularity: the base thresholds' granularity: ``"neuron"`` (the default: NeuronNorm's maxima), ``"channel"``
      or ``"layer"`` (as in :func:`jaxsnn.thresholds`).
    mesh: as in :func:`jaxsnn.calibrate` (default: all local devices).
    progress: a tqdm bar.
    checkpoint: a file path for a resumable pass (as in :func:`jaxsnn.calibrate`).
    checkpoint_every: micro-batch groups between checkpoint writes; None (the default): once a minute of work.
    micro_batch: examples per device in each computation (see :func:`jaxsnn.calibrate`).
    input_key: the input's key in dict batches.

  Returns:
    :class:`RatioHistograms`.

  Raises:
    ValueError: for an unknown granularity or empty batches.
  """
  caller = "jaxsnn.ratio_histograms"
  checks.granularity(granularity, caller)
  base = {k: normalize(v, granularity) for k, v in stats.max.items()}
  apply_fn, variables = ir.split_variables(apply_fn, variables)
  mesh = parallel.batch_mesh(mesh, caller)
  variables = parallel.replicate(mesh, variables)
  site_base = parallel.replicate(mesh, {k: v for k, v in base.items() if k != OUTPUT})
  net = {}

  def init(batch):
    _, net["traced"] = ir.trace(apply_fn, variables, batch.x, caller=caller)
    return {}

  def step(counts, p: runner.Prepared):
    got = _ratio_step(net["traced"], variables, p.x, p.device_mask, site_base, p.groups)
    return {k: runner.add_in_order(counts.get(k), v) for k, v in got.items()}

  job = lambda batch: fingerprint(caller, net["traced"].key, granularity, RATIO_BINS,  # noqa: E731
                                  arrays=(variables, site_base))
  counts, n = runner.fold(batches, step, init, caller=caller, mesh=mesh, micro_batch=micro_batch,
                          input_key=input_key, progress=progress,
                          checkpoint=checkpoint, fingerprint=job, checkpoint_every=checkpoint_every,
                          differs="another network, variables or base thresholds")
  counts = {k: counts[k] for k in stats.max if k in counts}  # network order
  return RatioHistograms(counts=counts, base=base, granularity=granularity, num_samples=n)


def _check_steps_and_potential(num_steps, initial_potential, caller) -> tuple[int, float]:
  return checks.num_steps(num_steps, caller), checks.fraction_of_threshold(initial_potential, "initial_potential",
                                                                            caller)


def expected_error(hist: RatioHistograms, num_steps: int, initial_potential: float = 0.5,
                   scales=DEFAULT_SCALES) -> dict:
  """Expected squared conversion error of every scale of the base thresholds, per site and channel.

  With threshold ``s * base`` and initial potential ``p * threshold``, an activation ``a = r * base`` is represented
  after T steps (constant-current model) by ``s * base * clip(floor(r T / s + p), 0, T) / T``; the squared error is
  summed over the histogram from its moments (exact for bins within one level; a bin that straddles a level
  boundary counts all its activations on the side of its mean).

  Args:
    hist: from :func:`ratio_histograms`.
    num_steps: the target T.
    initial_potential: p, a fraction of the threshold (0.5: optimal initialisation).
    scales: the candidate scales ``s``.

  Returns:
    ``{site: float64 [channels, len(scales)]}``: the sum over samples of the squared error, in activation units.
  """
  num_steps, initial_potential = _check_steps_and_potential(num_steps, initial_potential, "jaxsnn.expected_error")
  out = {}
  for name, (m0, m1, m2) in hist.counts.items():
    mean = np.where(m0 > 0, m1 / np.where(m0 > 0, m0, 1), 0.0)
    errors = []
    for s in np.asarray(scales, np.float64):
      q = s / num_steps * np.clip(np.floor(mean * num_steps / s + initial_potential), 0, num_steps)  # [C, BINS]
      errors.append(np.maximum(m2 - 2 * q * m1 + q * q * m0, 0).sum(axis=1))  # sum of w (r - q)^2, q fixed per bin
    out[name] = np.stack(errors, axis=1)  # [C, S]
  return out


def thresholds_for_steps(hist: RatioHistograms, num_steps: int, initial_potential: float = 0.5, *, granularity: str,
                         scales=DEFAULT_SCALES) -> dict:
  """Thresholds that minimise the expected squared conversion error of the training activations at T steps.

  For each site (``granularity="layer"``) or channel (``"channel"``), the scale ``s`` of the base thresholds (from
  the grid ``scales``) with the smallest :func:`expected_error`; thresholds are ``s * base``. Channels without a
  positive activation keep ``s = 1``. The output layer's threshold (``readout="spike"``) stays the base one.

  Args:
    hist: from :func:`ratio_histograms` (training data).
    num_steps: the target T.
    initial_potential: the initial potential the SNN will use (a fraction of the threshold).
    granularity: the scales' granularity, ``"channel"`` or ``"layer"``; required, since the histograms resolve
      channels, not neurons (jaxsnn's default granularity, ``"neuron"``, is not available here: per-neuron scales
      come from :func:`descend_thresholds`). The thresholds themselves keep the base's granularity
      (``hist.granularity``: per neuron by default).
    scales: candidate scales; 1.0 (the base thresholds) should be among them.

  Returns:
    ``{site: array of the site's shape}`` plus ``"output"``, for :func:`jaxsnn.convert` or ``snn.replace``.

  Raises:
    ValueError: for a bad granularity, T or initial potential.

  Example:
    >>> hist = jaxsnn.ratio_histograms(apply_fn, variables, train_batches, stats)
    >>> th = jaxsnn.thresholds_for_steps(hist, num_steps=16, initial_potential=0.5, granularity="channel")
  """
  caller = "jaxsnn.thresholds_for_steps"
  checks.granularity(granularity, caller, ("channel", "layer"),
                     "Per-neuron scales need per-neuron statistics: use jaxsnn.descend_thresholds.")
  errors = expected_error(hist, num_steps, initial_potential, scales)
  scales = np.asarray(scales, np.float64)
  out = {}
  for name, base in hist.base.items():
    if name not in errors:
      out[name] = base
      continue
    e = errors[name]  # [C, S]
    if granularity == "layer":
      e = e.sum(axis=0, keepdims=True)
    best = scales[np.argmin(e, axis=1)]
    best = np.where(e.sum(axis=1) > 0, best, 1.0)
    per_channel = np.broadcast_to(best, (_channels(np.shape(base)),))
    out[name] = jnp.asarray(np.asarray(base) * per_channel.astype(np.asarray(base).dtype), jnp.asarray(base).dtype)
  return out


# ----------------------------------------------------------------------------------------------------------------
# The differentiable variant.
# ----------------------------------------------------------------------------------------------------------------

def relaxed_quantization_error(activations, threshold, num_steps: int, initial_potential: float = 0.5,
                               temperature: float = 0.1, reduction: str = "mean") -> jax.Array:
  """Squared error of rate-coding ``activations`` with ``threshold`` in T steps, with the floor relaxed.

  The spike count ``clip(floor(u), 0, T)`` with ``u = a T / theta + p`` is the number of levels ``k = 1..T`` below
  ``u``; replacing each step ``[u >= k]`` by ``sigmoid((u - k) / temperature)`` gives a smooth count, exact as the
  temperature goes to 0, whose gradient w.r.t. the threshold sees every level. Memory: one activation tensor (the
  levels are summed in a loop).

  Args:
    activations: ANN activations (>= 0), e.g. ``[batch, *site_shape]``.
    threshold: broadcastable to the activations from the right (per neuron, per channel or a scalar).
    num_steps: T.
    initial_potential: p, a fraction of the threshold.
    temperature: the sigmoid's width in levels (> 0).
    reduction: ``"mean"``, ``"sum"`` or ``"none"``.

  Returns:
    The error.
  """
  a = jnp.asarray(activations)
  theta = jnp.asarray(threshold, a.dtype)
  safe = jnp.where(theta > 0, theta, 1)
  u = a * num_steps / safe + initial_potential

  def level(k, count):
    return count + jax.nn.sigmoid((u - k) / temperature)

  count = jax.lax.fori_loop(1, num_steps + 1, level, jnp.zeros_like(u))
  q = jnp.where(theta > 0, theta * count / num_steps, 0)
  err = jnp.square(a - q)
  if reduction == "mean":
    return err.mean()
  if reduction == "sum":
    return err.sum()
  return err


def _scale_shape(shape, granularity):
  if granularity == "neuron":
    return tuple(shape)
  if granularity == "channel":
    return (_channels(shape),)
  return ()


@functools.partial(jit, static_argnums=(3, 4, 5, 6))
def _descend(log_scales, base, acts, num_steps, initial_potential, temperature, iterations_and_rate):
  iterations, rate = iterations_and_rate
  opt = optax.adam(rate)

  def loss(log_scales):
    total = 0.0
    for name, a in acts.items():
      th = base[name] * jnp.exp(log_scales[name])
      scale = jnp.maximum(jnp.mean(jnp.square(a)), jnp.finfo(a.dtype).tiny)  # every site weighs the same
      total = total + relaxed_quantization_error(a, th, num_steps, initial_potential, temperature) / scale
    return total

  def step(carry, _):
    params, state, best, best_value = carry
    value, grads = jax.value_and_grad(loss)(params)
    better = value < best_value  # Adam is not monotone: keep the best iterate seen
    best = jax.tree_util.tree_map(lambda p, b: jnp.where(better, p, b), params, best)
    updates, state = opt.update(grads, state, params)
    return (optax.apply_updates(params, updates), state, best, jnp.minimum(value, best_value)), value

  init = (log_scales, opt.init(log_scales), log_scales, jnp.asarray(jnp.inf, jnp.float32))
  (last, _, best, best_value), history = jax.lax.scan(step, init, None, length=iterations)
  last_value = loss(last)
  best = jax.tree_util.tree_map(lambda l, b: jnp.where(last_value < best_value, l, b), last, best)
  return best, history, jnp.minimum(last_value, best_value)


def descend_thresholds(activations: Mapping[str, Any], thresholds: Mapping[str, Any], num_steps: int,
                       initial_potential: float = 0.5, granularity: str = DEFAULT_GRANULARITY,
                       iterations: int = 200, learning_rate: float = 0.02,
                       temperature: float = 0.1) -> tuple[dict, Report]:
  """Thresholds tuned by gradient descent on :func:`relaxed_quantization_error` at the target T.

  Each site's thresholds are ``thresholds[site] * exp(z)`` with ``z`` per neuron, channel or layer; ``z`` starts at 0
  and descends (Adam, ``jax.grad``) the sum over sites of each site's relaxed squared error divided by its mean
  squared activation, on the given activations. The best iterate is returned (never worse than the start).

  Args:
    activations: ``{site: [batch, *site_shape]}`` ANN activations of training inputs
      (:func:`jaxsnn.analysis.site_activations`); sites left out keep their thresholds.
    thresholds: the starting thresholds ``{site: array}`` (e.g. ``jaxsnn.thresholds(stats)``).
    num_steps: the target T.
    initial_potential: the initial potential the SNN will use.
    granularity: ``"neuron"`` (the default), ``"channel"`` or ``"layer"``: how many log-scales a site has.
    iterations: Adam's updates.
    learning_rate: Adam's rate on the log-scales.
    temperature: the relaxation's width (see :func:`relaxed_quantization_error`).

  Returns:
    ``(thresholds, report)``: the tuned thresholds (all sites of ``thresholds``) and a :class:`jaxsnn.Report`
    (as :func:`jaxsnn.tune_snn` returns) whose ``details["losses"]`` is the objective before every update, then that
    of the returned thresholds (``[iterations + 1]``), and whose ``chose["best_loss"]`` is the returned thresholds'.

  Raises:
    ValueError: for a bad granularity, T, initial potential, iteration count, or activations whose shapes do not
      fit.

  Example:
    >>> th, report = jaxsnn.descend_thresholds(acts, jaxsnn.thresholds(stats), num_steps=16, iterations=50)
    >>> bool(report.details["losses"][-1] <= report.details["losses"][0])
    True
  """
  caller = "jaxsnn.descend_thresholds"
  t0 = time.perf_counter()
  num_steps, initial_potential = _check_steps_and_potential(num_steps, initial_potential, caller)
  checks.granularity(granularity, caller)
  iterations = checks.iterations(iterations, caller)
  if not temperature > 0:
    raise ValueError(f"{caller}: temperature must be > 0; got {temperature!r}.")
  acts, base = {}, {}
  for name, a in activations.items():
    if name == OUTPUT:
      continue
    if name not in thresholds:
      raise ValueError(f"{caller}: activations of '{name}' but no threshold for it.")
    if np.shape(a)[1:] != np.shape(thresholds[name]):
      raise ValueError(f"{caller}: activations of '{name}' have shape {np.shape(a)}, thresholds "
                       f"{np.shape(thresholds[name])}; expected [batch, *site_shape].")
    acts[name], base[name] = jnp.asarray(a), jnp.asarray(thresholds[name])
  zeros = {k: jnp.zeros(_scale_shape(np.shape(v), granularity), v.dtype) for k, v in base.items()}
  log_scales, history, final = _descend(zeros, base, acts, num_steps, initial_potential,
                                        float(temperature), (iterations, float(learning_rate)))
  out = dict(thresholds)
  for name, z in log_scales.items():
    out[name] = (base[name] * jnp.exp(z)).astype(base[name].dtype)
  losses = np.append(np.asarray(history, np.float64), float(final))
  examples = max((int(np.shape(a)[0]) for a in acts.values()), default=0)
  report = Report("descend_thresholds", {"granularity": granularity, "iterations": iterations,
                                         "best_loss": float(final)},
                  examples=examples, num_steps=num_steps, details={"losses": losses},
                  seconds=time.perf_counter() - t0)
  return out, report


