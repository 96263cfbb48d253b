"""Low-latency conversion: thresholds chosen for a target number of steps, and a layer-wise SNN calibration pass.

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
2. :func:`thresholds_for_steps`: per channel (or per site) the scale ``s`` on a grid that minimises that error;
   thresholds ``s * base``.

:func:`descend_thresholds` is the differentiable variant: gradient descent (``jax.grad`` + optax) of a relaxed
version of the same error (:func:`relaxed_quantization_error`, the floor replaced by a sum of sigmoids) w.r.t.
per-neuron, per-channel or per-site thresholds, on activations held in memory.

:func:`calibrate_snn` is Li et al.'s (ICML 2021) layer-wise calibration: site by site from the input, it simulates the
SNN for T steps on training batches and removes each channel's (or neuron's) mean error against the ANN with a
current offset added every step, or with the initial potential.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsnn._src import ir, parallel
from jaxsnn._src.calibrate import Stats, check_batches, split_batch
from jaxsnn._src.convert import SpikingNetwork
from jaxsnn._src.files import atomic_write, load_checkpoint
from jaxsnn._src.ir import OUTPUT
from jaxsnn._src.norms import NORMS, normalize
from jaxsnn._src.simulate import job_fingerprint, simulate

RATIO_BINS = 4096
DEFAULT_SCALES = tuple(np.round(np.linspace(0.02, 1.0, 99), 4).tolist())
GRANULARITIES = ("site", "channel", "neuron")


class RatioHistograms(NamedTuple):
  """Histograms of normalised activations, from :func:`ratio_histograms`.

  Attributes:
    counts: ``{site: float64 [3, channels, RATIO_BINS]}``: ``[k, c, b]`` holds the sum of ``base^2 * r^k``
      (``k = 0, 1, 2``) over the positive activations ``a`` of channel ``c`` with ``r = a / base`` in
      ``[b, b + 1) / RATIO_BINS`` (the last bin also holds everything above 1).
    base: ``{site: array of the site's shape}``: the base thresholds (``jaxsnn.thresholds(stats, norm)``), and
      ``"output"``.
    norm: the norm of the base thresholds.
    num_samples: samples seen.
  """

  counts: dict
  base: dict
  norm: str
  num_samples: int


def _channels(shape) -> int:
  return int(shape[-1]) if len(shape) else 1


@functools.partial(jax.jit, static_argnums=0)
def _ratio_step(traced: ir.Traced, variables, x, mask, base):
  program = ir.build_program(traced.fn, variables, x, caller="jaxsnn.ratio_histograms")
  rec, _ = ir.site_values(program, variables, x)
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
    index = (channel * RATIO_BINS + bins).ravel()
    out[name] = jnp.stack([jnp.bincount(index, (weight * r ** k).ravel(), length=a.shape[-1] * RATIO_BINS)
                           for k in range(3)]).reshape(3, a.shape[-1], RATIO_BINS)
  return out


def ratio_histograms(apply_fn: Callable, variables: Any, batches: Iterable[Any], stats: Stats,
                     norm: str = "neuron", *, mesh=None) -> RatioHistograms:
  """One pass over training batches: the statistic :func:`thresholds_for_steps` needs.

  Args:
    apply_fn: the ANN's apply function (as given to :func:`jaxsnn.calibrate`).
    variables: its variables.
    batches: training batches (``x`` or ``(x, mask)``, as for :func:`jaxsnn.calibrate`); the same or other
      training data than the calibration pass. Never the test set.
    stats: from :func:`jaxsnn.calibrate`: the per-neuron maxima that make the base thresholds.
    norm: the base thresholds' norm (``"neuron"``, ``"channel"`` or ``"layer"``).
    mesh: as in :func:`jaxsnn.calibrate` (default: all local devices).

  Returns:
    :class:`RatioHistograms`.

  Raises:
    ValueError: for an unknown norm or empty batches.
  """
  caller = "jaxsnn.ratio_histograms"
  if norm not in NORMS:
    raise ValueError(f"{caller}: norm must be one of {NORMS}; got {norm!r}.")
  check_batches(batches, caller)
  base = {k: normalize(v, norm) for k, v in stats.max.items()}
  mesh = parallel.batch_mesh(mesh, caller)
  variables = parallel.replicate(mesh, variables)
  site_base = parallel.replicate(mesh, {k: v for k, v in base.items() if k != OUTPUT})
  counts, traced, n = None, None, 0
  for batch in batches:
    x, mask = split_batch(batch, caller)
    size = int(np.shape(jax.tree_util.tree_leaves(x)[0])[0])
    mask = jnp.ones(size, bool) if mask is None else mask
    if traced is None:
      _, traced = ir.trace(apply_fn, variables, x, caller=caller)
    n += int(np.sum(np.asarray(mask)))
    x, mask = parallel.shard_batch(mesh, x, parallel.pad(mask, parallel.padded_size(mesh, size), False))
    got = _ratio_step(traced, variables, x, mask, site_base)
    if counts is None:
      counts = {k: np.zeros(v.shape, np.float64) for k, v in got.items()}
    for k, v in got.items():
      counts[k] += np.asarray(v, np.float64)
  if counts is None:
    raise ValueError(f"{caller}: batches is empty.")
  return RatioHistograms(counts=counts, base=base, norm=norm, num_samples=n)


def _check_steps_and_potential(num_steps, initial_potential, caller):
  if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise ValueError(f"{caller}: num_steps must be a positive int; got {num_steps!r}.")
  if not np.isfinite(initial_potential) or not 0 <= initial_potential < 1:
    raise ValueError(f"{caller}: initial_potential must be a fraction of the threshold in [0, 1); got "
                     f"{initial_potential!r}.")


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
  _check_steps_and_potential(num_steps, initial_potential, "jaxsnn.expected_error")
  out = {}
  for name, (m0, m1, m2) in hist.counts.items():
    mean = np.where(m0 > 0, m1 / np.where(m0 > 0, m0, 1), 0.0)
    errors = []
    for s in np.asarray(scales, np.float64):
      q = s / num_steps * np.clip(np.floor(mean * num_steps / s + initial_potential), 0, num_steps)  # [C, BINS]
      errors.append(np.maximum(m2 - 2 * q * m1 + q * q * m0, 0).sum(axis=1))  # sum of w (r - q)^2, q fixed per bin
    out[name] = np.stack(errors, axis=1)  # [C, S]
  return out


def thresholds_for_steps(hist: RatioHistograms, num_steps: int, initial_potential: float = 0.5,
                         granularity: str = "channel", scales=DEFAULT_SCALES) -> dict:
  """Thresholds that minimise the expected squared conversion error of the training activations at T steps.

  For each site (``granularity="site"``) or channel (``"channel"``), the scale ``s`` of the base thresholds (from
  the grid ``scales``) with the smallest :func:`expected_error`; thresholds are ``s * base``. Channels without a
  positive activation keep ``s = 1``. The output layer's threshold (``readout="spike"``) stays the base one.

  Args:
    hist: from :func:`ratio_histograms` (training data).
    num_steps: the target T.
    initial_potential: the initial potential the SNN will use (a fraction of the threshold).
    granularity: ``"site"`` or ``"channel"`` (per-neuron scales: :func:`descend_thresholds`).
    scales: candidate scales; 1.0 (the base thresholds) should be among them.

  Returns:
    ``{site: array of the site's shape}`` plus ``"output"``, for :func:`jaxsnn.convert` or ``snn.replace``.

  Raises:
    ValueError: for a bad granularity, T or initial potential.

  Example:
    >>> hist = jaxsnn.ratio_histograms(apply_fn, variables, train_batches, stats)
    >>> th = jaxsnn.thresholds_for_steps(hist, num_steps=16, initial_potential=0.5)
  """
  caller = "jaxsnn.thresholds_for_steps"
  if granularity not in ("site", "channel"):
    raise ValueError(f"{caller}: granularity must be 'site' or 'channel' (per neuron: jaxsnn.descend_thresholds); "
                     f"got {granularity!r}.")
  errors = expected_error(hist, num_steps, initial_potential, scales)
  scales = np.asarray(scales, np.float64)
  out = {}
  for name, base in hist.base.items():
    if name not in errors:
      out[name] = base
      continue
    e = errors[name]  # [C, S]
    if granularity == "site":
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


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _descend(log_scales, base, acts, num_steps, initial_potential, temperature, steps_and_rate):
  steps, rate = steps_and_rate
  opt = optax.adam(rate)

  def loss(log_scales):
    total = 0.0
    for name, a in acts.items():
      th = base[name] * jnp.exp(log_scales[name])
      norm = jnp.maximum(jnp.mean(jnp.square(a)), jnp.finfo(a.dtype).tiny)  # every site weighs the same
      total = total + relaxed_quantization_error(a, th, num_steps, initial_potential, temperature) / norm
    return total

  def step(carry, _):
    params, state, best, best_value = carry
    value, grads = jax.value_and_grad(loss)(params)
    better = value < best_value  # Adam is not monotone: keep the best iterate seen
    best = jax.tree_util.tree_map(lambda p, b: jnp.where(better, p, b), params, best)
    updates, state = opt.update(grads, state, params)
    return (optax.apply_updates(params, updates), state, best, jnp.minimum(value, best_value)), value

  init = (log_scales, opt.init(log_scales), log_scales, jnp.asarray(jnp.inf, jnp.float32))
  (last, _, best, best_value), history = jax.lax.scan(step, init, None, length=steps)
  last_value = loss(last)
  best = jax.tree_util.tree_map(lambda l, b: jnp.where(last_value < best_value, l, b), last, best)
  return best, history, jnp.minimum(last_value, best_value)


def descend_thresholds(activations: Mapping[str, Any], thresholds: Mapping[str, Any], num_steps: int,
                       initial_potential: float = 0.5, granularity: str = "neuron", steps: int = 200,
                       learning_rate: float = 0.02, temperature: float = 0.1) -> tuple[dict, np.ndarray]:
  """Thresholds tuned by gradient descent on :func:`relaxed_quantization_error` at the target T.

  Each site's thresholds are ``thresholds[site] * exp(z)`` with ``z`` per neuron, channel or site; ``z`` starts at 0
  and descends (Adam, ``jax.grad``) the sum over sites of each site's relaxed squared error divided by its mean
  squared activation, on the given activations. The best iterate is returned (never worse than the start).

  Args:
    activations: ``{site: [batch, *site_shape]}`` ANN activations of training inputs
      (:func:`jaxsnn.analysis.site_activations`); sites left out keep their thresholds.
    thresholds: the starting thresholds ``{site: array}`` (e.g. ``jaxsnn.thresholds(stats)``).
    num_steps: the target T.
    initial_potential: the initial potential the SNN will use.
    granularity: ``"neuron"``, ``"channel"`` or ``"site"``.
    steps: gradient steps.
    learning_rate: Adam's rate on the log-scales.
    temperature: the relaxation's width (see :func:`relaxed_quantization_error`).

  Returns:
    ``(thresholds, losses)``: the tuned thresholds (all sites of ``thresholds``) and the objective before every step,
    then that of the returned thresholds (``[steps + 1]``).

  Raises:
    ValueError: for a bad granularity, T, initial potential, or activations whose shapes do not fit.
  """
  caller = "jaxsnn.descend_thresholds"
  _check_steps_and_potential(num_steps, initial_potential, caller)
  if granularity not in GRANULARITIES:
    raise ValueError(f"{caller}: granularity must be one of {GRANULARITIES}; got {granularity!r}.")
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
  log_scales, history, final = _descend(zeros, base, acts, int(num_steps), float(initial_potential),
                                        float(temperature), (int(steps), float(learning_rate)))
  out = dict(thresholds)
  for name, z in log_scales.items():
    out[name] = (base[name] * jnp.exp(z)).astype(base[name].dtype)
  return out, np.append(np.asarray(history), float(final))


# ----------------------------------------------------------------------------------------------------------------
# Layer-wise SNN calibration (Li et al. 2021).
# ----------------------------------------------------------------------------------------------------------------

TARGETS = ("offset", "potential")


def calibrate_snn(snn: SpikingNetwork, batches: Iterable[Any], num_steps: int, *, target: str = "potential",
                  granularity: str = "channel", block_size: int | None = None, progress: bool = False,
                  mesh=None) -> SpikingNetwork:
  """Layer-wise SNN calibration (Li et al., ICML 2021): remove each site's mean error against the ANN at T steps.

  Site by site from the input side, simulates the SNN (with the corrections of the sites before) for ``num_steps``
  on the given batches, compares each neuron's rate-coded value (net spikes x threshold / T) with the ANN's
  activation on the same inputs, averages the difference over the samples (and, with ``granularity="channel"``,
  over the positions of each channel), and removes it:

  * ``target="offset"``: a current added to the neuron at every step (``snn.offsets``; over T steps it adds the
    missing amount), the SNN analogue of Li et al.'s bias calibration;
  * ``target="potential"`` (the default): the initial potential (``snn.initial_potential``; the whole missing
    charge at t = 0), their potential calibration. On 1,000 validation images of the CIFAR-10 ResNet-20 with
    thresholds for T and v0 = θ/2 it did slightly better than offsets (81.8 vs 80.1 % at T = 8, 88.6 vs 87.7 % at
    T = 16).

  A pure function of its inputs: it returns a new network and reads only ``batches`` (give it training data; it never
  sees anything else). Data only changes, so the calibrated network runs on the simulator already compiled.

  Args:
    snn: a converted network (its thresholds and initial potentials are the starting point).
    batches: a few training batches (``x`` or ``(x, mask)``); kept in memory, each simulated once per site.
    num_steps: the T to calibrate for.
    target: ``"potential"`` or ``"offset"``.
    granularity: ``"channel"`` (one correction per channel: robust with few samples) or ``"neuron"``.
    block_size: the simulation schedule (see :func:`jaxsnn.simulate`).
    progress: a tqdm bar over the sites.
    mesh: as in :func:`jaxsnn.calibrate` (default: all local devices).

  Returns:
    The calibrated :class:`SpikingNetwork`.

  Raises:
    ValueError: for a bad target, granularity or T, or empty batches.

  Example:
    >>> snn = jaxsnn.calibrate_snn(snn, [x_train[:256]], num_steps=16)
  """
  caller = "jaxsnn.calibrate_snn"
  if target not in TARGETS:
    raise ValueError(f"{caller}: target must be one of {TARGETS}; got {target!r}.")
  if granularity not in ("channel", "neuron"):
    raise ValueError(f"{caller}: granularity must be 'channel' or 'neuron'; got {granularity!r}.")
  _check_steps_and_potential(num_steps, 0.0, caller)
  check_batches(batches, caller)
  mesh = parallel.batch_mesh(mesh, caller)
  data = []
  for batch in batches:
    x, mask = split_batch(batch, caller)
    size = int(np.shape(jax.tree_util.tree_leaves(x)[0])[0])
    mask = np.asarray(parallel.pad(np.ones(size, bool) if mask is None else np.asarray(mask),
                                   parallel.padded_size(mesh, size), False))
    (x,) = parallel.shard_batch(mesh, x)
    data.append((x, mask))
  if not data:
    raise ValueError(f"{caller}: batches is empty; pass a few batches of training inputs.")
  count = sum(int(m.sum()) for _, m in data)
  ann = {}
  variables = parallel.replicate(mesh, snn.variables)
  for x, mask in data:
    acts = _activations(snn.traced, variables, x)
    for name in snn.site_names:
      ann[name] = ann.get(name, 0.0) + np.asarray(acts[name], np.float64)[mask].sum(axis=0)
  sites = snn.site_names
  bar = None
  if progress:
    try:
      from tqdm.auto import tqdm
      bar = tqdm(sites, desc=f"calibrate_snn T={num_steps}", unit="site")
      sites = bar
    except ImportError:  # progress is a nicety, not a dependency
      pass
  for name in sites:
    total = 0.0
    replicated = parallel.replicate(mesh, snn)
    for x, mask in data:
      trace = simulate(replicated, x, num_steps, block_size)
      net = np.asarray(trace.pos_spikes[name] - trace.neg_spikes[name], np.float64)[mask].sum(axis=0)
      total = total + net * np.asarray(snn.thresholds[name], np.float64) / num_steps
    err = (ann[name] - total) / count  # per neuron: how much the SNN falls short of the ANN, in activation units
    if granularity == "channel" and err.ndim > 1:
      err = np.broadcast_to(err.reshape(-1, err.shape[-1]).mean(axis=0), err.shape)
    if target == "offset":
      snn = snn.replace(offsets={name: np.asarray(snn.offsets[name], np.float64) + err})
    else:
      th = np.asarray(snn.thresholds[name], np.float64)
      frac = np.where(th > 0, err * num_steps / np.where(th > 0, th, 1), 0.0)
      snn = snn.replace(initial_potential={name: np.asarray(snn.initial_potential[name], np.float64) + frac})
  if bar is not None:
    bar.close()
  return snn


def choose_readout_delay(snn: SpikingNetwork, batches: Iterable[Any], num_steps: int, *,
                         block_size: int | None = None, progress: bool = False) -> tuple[SpikingNetwork, np.ndarray]:
  """The readout delay under which the SNN's answer after ``num_steps`` agrees most often with its ANN's.

  In the first steps of a deep SNN the late layers have not started to fire in proportion to their inputs (the
  charge is still travelling through the earlier ones), so the output of those steps is off; at a small T they
  weigh on the average. A readout delay ``d`` (:attr:`SpikingNetwork.readout_delay`) averages the output over steps
  ``d + 1 .. T`` only; the simulation still runs T steps (same latency and cost). SpikingJelly's converter has a
  rule of this kind (``estimate_delay_start``); here ``d`` is chosen by what it is for: on the given inputs, the
  SNN is simulated once and, for every ``d = 0 .. T - 1``, the predicted class (argmax) read over steps ``d + 1 .. T``
  is compared with the ANN's; the ``d`` with the most agreements wins (the smallest on a tie). No labels are read:
  give it training inputs (never the test set).

  A pure function: it returns a new network (the same one with ``readout_delay = d``; data only, nothing
  recompiles) and the agreement of every candidate.

  Args:
    snn: a converted network, e.g. after :func:`calibrate_snn` at ``num_steps`` (its current delay is ignored).
    batches: a few training batches (``x`` or ``(x, mask)``), e.g. 1,000 images.
    num_steps: the T the network will be run for.
    block_size: schedule, as in :func:`simulate` (same result).
    progress: show a tqdm bar over the batches.

  Returns:
    ``(snn with the chosen readout_delay, agreement)``: ``agreement[d]`` is the fraction of the inputs on which the
    readout over steps ``d + 1 .. T`` picks the ANN's class.

  Raises:
    ValueError: for a bad T or empty batches.

  Example:
    >>> snn = jaxsnn.calibrate_snn(snn, [x_train[:256]], num_steps=8)
    >>> snn, agreement = jaxsnn.choose_readout_delay(snn, [x_train[256:1280]], num_steps=8)
  """
  caller = "jaxsnn.choose_readout_delay"
  _check_steps_and_potential(num_steps, 0.0, caller)
  check_batches(batches, caller)
  plain = snn.replace(readout_delay=0)
  hits = np.zeros(num_steps, np.int64)
  count = 0
  if progress:
    try:
      from tqdm.auto import tqdm
      batches = tqdm(batches, desc=f"choose_readout_delay T={num_steps}", unit="batch")
    except ImportError:  # progress is a nicety, not a dependency
      pass
  steps = np.arange(1, num_steps + 1, dtype=np.float64)
  for batch in batches:
    x, mask = split_batch(batch, caller)
    size = int(np.shape(jax.tree_util.tree_leaves(x)[0])[0])
    mask = np.ones(size, bool) if mask is None else np.asarray(mask, bool)
    want = np.asarray(_ann_logits(snn, x)).reshape(size, -1).argmax(-1)
    out = np.asarray(simulate(plain, x, num_steps, block_size).outputs, np.float64).reshape(num_steps, size, -1)
    cum = out * steps[:, None, None]  # cum[t - 1]: the readout summed over steps 1..t
    for d in range(num_steps):
      window = cum[-1] - (cum[d - 1] if d else 0.0)
      hits[d] += int(((window.argmax(-1) == want) & mask).sum())
    count += int(mask.sum())
  if count == 0:
    raise ValueError(f"{caller}: batches is empty (or fully masked); pass a few batches of training inputs.")
  agreement = hits / count
  return snn.replace(readout_delay=int(np.argmax(agreement))), agreement


@functools.partial(jax.jit, static_argnums=0)
def _activations(traced: ir.Traced, variables, x):
  program = ir.build_program(traced.fn, variables, x, caller="jaxsnn.calibrate_snn")
  return ir.site_values(program, variables, x)[0]


# ----------------------------------------------------------------------------------------------------------------
# End-to-end tuning through the simulation (straight-through spikes).
# ----------------------------------------------------------------------------------------------------------------

@jax.custom_jvp
def _fires(u, width):
  """``u >= 0`` as 0/1, with the derivative of ``sigmoid(u / width)`` (a surrogate for the step's)."""
  return (u >= 0).astype(u.dtype)


@_fires.defjvp
def _fires_jvp(primals, tangents):
  u, width = primals
  du, _ = tangents
  sig = jax.nn.sigmoid(u / width)
  return _fires(u, width), sig * (1 - sig) / width * du


def _surrogate(neuron, width: float):
  """A neuron with the same spikes and a surrogate gradient through its firing decisions (IF and SNM)."""
  from jaxsnn._src import neurons as nrn

  def snm_step(threshold, state, current):
    v = state.v + current
    live = (threshold > 0).astype(v.dtype)
    scale = jnp.maximum(threshold, 1e-12) * width
    pos = live * _fires(v - threshold, scale)
    neg = live * _fires(-threshold - v, scale) * (state.m > 0).astype(v.dtype) * (1 - pos)
    s = threshold.astype(v.dtype) * (pos - neg)
    m = state.m + pos.astype(jnp.int32) - neg.astype(jnp.int32)
    return nrn.SNMState(v=v - s, m=m), s.astype(jnp.result_type(threshold))

  def if_step(threshold, state, current):
    v = state.v + current
    live = (threshold > 0).astype(v.dtype)
    pos = live * _fires(v - threshold, jnp.maximum(threshold, 1e-12) * width)
    s = threshold.astype(v.dtype) * pos
    return nrn.IFState(v=v - s), s.astype(jnp.result_type(threshold))

  if neuron is nrn.SNM():
    return nrn.Neuron(init=neuron.init, step=snm_step, name="SNM (surrogate)")
  if neuron is nrn.IF("subtract"):
    return nrn.Neuron(init=neuron.init, step=if_step, name="IF(subtract) (surrogate)")
  raise ValueError(f"jaxsnn.tune_snn: end-to-end tuning supports SNM and IF(subtract) neurons; got {neuron.name}.")


_SURROGATES: dict = {}


def tune_snn(snn: SpikingNetwork, batches: Iterable[Any], num_steps: int, *, steps: int = 200,
             learning_rate: float = 0.01, tune=("thresholds", "offsets", "initial_potential"),
             width: float = 0.5, block_size: int | None = None, progress: bool = False, checkpoint=None,
             checkpoint_every: int = 10) -> tuple[SpikingNetwork, np.ndarray]:
  """End-to-end tuning of per-channel thresholds, offsets and initial potentials through the simulated SNN.

  The loss is the mean squared distance between the SNN's readout after ``num_steps`` (over steps ``d + 1 ..
  num_steps`` when the network has a readout delay ``d``) and the ANN's logits on training batches; its gradient flows through the simulation with the spike decisions' step function given the
  derivative of ``sigmoid(u / (width * threshold))`` (a surrogate; the forward spikes are exactly the network's).
  Per channel (last axis) of every site: a log-scale of the thresholds, a current offset and an initial potential
  (fraction of the threshold), from the network's own values, descended with Adam. Weights never change. The
  iterate with the lowest loss averaged over a round of the batches is returned.

  Args:
    snn: a converted network (e.g. after :func:`calibrate_snn`); SNM or IF(subtract) neurons.
    batches: a few training batches (``x`` or ``(x, mask)``); used in turn, one per step. Never the test set.
    num_steps: the T to tune for.
    steps: gradient steps.
    learning_rate: Adam's rate.
    tune: which of ``"thresholds"``, ``"offsets"``, ``"initial_potential"`` to tune.
    width: the surrogate's width, a fraction of the threshold.
    block_size: the simulation schedule.
    progress: a tqdm bar.
    checkpoint: a file path: the tuning state (step, Adam's state, the iterate, the best one so far and the losses)
      is written there atomically every ``checkpoint_every`` steps and at the end; a call with the same network,
      batches and settings resumes from it and returns exactly what an uninterrupted call returns. A checkpoint of
      another job raises. The caller deletes it when done with it.
    checkpoint_every: steps between checkpoint writes.

  Returns:
    ``(snn, losses)``: the tuned network and the loss at every step.

  Raises:
    ValueError: for an unsupported neuron, unknown names in ``tune``, empty batches, a bad ``checkpoint_every``,
      or a checkpoint of another job.
  """
  caller = "jaxsnn.tune_snn"
  _check_steps_and_potential(num_steps, 0.0, caller)
  unknown = set(tune) - {"thresholds", "offsets", "initial_potential"}
  if unknown:
    raise ValueError(f"{caller}: cannot tune {sorted(unknown)}; choose among thresholds, offsets, initial_potential.")
  check_batches(batches, caller)
  if checkpoint is not None and (not isinstance(checkpoint_every, (int, np.integer)) or checkpoint_every < 1):
    raise ValueError(f"{caller}: checkpoint_every must be a positive integer, got {checkpoint_every!r}.")
  data = []
  for batch in batches:
    x, mask = split_batch(batch, caller)
    size = int(np.shape(jax.tree_util.tree_leaves(x)[0])[0])
    mask = jnp.ones(size, jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
    data.append((x, mask, _ann_logits(snn, x)))
  if not data:
    raise ValueError(f"{caller}: batches is empty; pass a few batches of training inputs.")
  key = (snn.neuron, float(width))
  if key not in _SURROGATES:
    _SURROGATES[key] = _surrogate(snn.neuron, width)
  import dataclasses as _dc
  differentiable = _dc.replace(snn, neuron=_SURROGATES[key])
  names = snn.site_names
  channels = {n: (_channels(dict(snn.site_shapes)[n]),) for n in names}
  params = {"log_scale": {n: jnp.zeros(channels[n]) for n in names},
            "offset": {n: jnp.zeros(channels[n]) for n in names},
            "potential": {n: jnp.zeros(channels[n]) for n in names}}
  opt = optax.adam(learning_rate)
  state = opt.init(params)
  mask_grads = {"log_scale": "thresholds" in tune, "offset": "offsets" in tune, "potential": "initial_potential" in tune}

  def apply(params, net):
    th = {n: (net.thresholds[n] * jnp.exp(params["log_scale"][n])).astype(net.thresholds[n].dtype) for n in names}
    off = {n: (net.offsets[n] + params["offset"][n]).astype(net.offsets[n].dtype) for n in names}
    pot = {n: (net.initial_potential[n] + params["potential"][n]).astype(net.initial_potential[n].dtype)
           for n in names}
    return _dc.replace(net, thresholds={**net.thresholds, **th}, offsets=off,
                       initial_potential={**net.initial_potential, **pot})

  def loss(params, x, mask, target):
    trace = simulate(apply(params, differentiable), x, num_steps, block_size)
    err = jnp.square(trace.outputs[-1].astype(jnp.float32) - target).reshape(target.shape[0], -1).mean(axis=1)
    return jnp.sum(err * mask) / jnp.maximum(jnp.sum(mask), 1)

  grad_fn = jax.jit(jax.value_and_grad(loss))
  fingerprint = None
  resumed = None
  if checkpoint is not None:
    fingerprint = _tune_fingerprint(snn, data, num_steps, steps, learning_rate, mask_grads, width, block_size)
    resumed = _load_tune(checkpoint, fingerprint, (params, state, params), caller)
  if resumed is not None:
    start, (params, state, best), best_loss, losses = resumed
  else:
    # The starting point is a candidate too: its loss over one round of the batches.
    start, best, losses = 0, params, []
    best_loss = float(np.mean([float(grad_fn(params, *d)[0]) for d in data]))
  bar = None
  if progress:
    try:
      from tqdm.auto import tqdm
      bar = tqdm(total=steps, initial=start, desc=f"tune_snn T={num_steps}")
    except ImportError:
      pass
  for i in range(start, steps):
    x, mask, target = data[i % len(data)]
    value, grads = grad_fn(params, x, mask, target)
    grads = {k: jax.tree_util.tree_map(lambda g: g * mask_grads[k], v) for k, v in grads.items()}
    value = float(value)
    losses.append(value)
    # The mean loss over the last round of batches (iterates a few small steps apart) stands for this iterate's.
    if i >= len(data) and np.mean(losses[-len(data):]) < best_loss:
      best_loss, best = np.mean(losses[-len(data):]), params
    updates, state = opt.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    if bar is not None:
      bar.update(1)
      bar.set_postfix(loss=f"{value:.4g}")
    if checkpoint is not None and ((i + 1) % checkpoint_every == 0 or i + 1 == steps):
      _save_tune(checkpoint, fingerprint, i + 1, (params, state, best), best_loss, losses)
  if bar is not None:
    bar.close()
  tuned = apply(best, snn)
  return snn.replace(thresholds=tuned.thresholds, offsets=tuned.offsets,
                     initial_potential=tuned.initial_potential), np.asarray(losses)


def _tune_fingerprint(snn: SpikingNetwork, data, num_steps, steps, learning_rate, mask_grads, width,
                      block_size) -> str:
  """What a resumed :func:`tune_snn` must share with the call that wrote the checkpoint."""
  h = hashlib.sha256(job_fingerprint(snn, num_steps, block_size, None, ()).encode())
  h.update(repr((steps, float(learning_rate), sorted(mask_grads.items()), float(width))).encode())
  for leaf in jax.tree_util.tree_leaves(data):
    h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return h.hexdigest()


def _save_tune(path, fingerprint: str, step: int, trees, best_loss: float, losses) -> None:
  arrays = {"fingerprint": np.asarray(fingerprint), "step": np.asarray(step), "best_loss": np.asarray(best_loss),
            "losses": np.asarray(losses, np.float64)}
  arrays.update({f"leaf:{i}": np.asarray(leaf) for i, leaf in enumerate(jax.tree_util.tree_leaves(trees))})
  atomic_write(path, lambda f: np.savez(f, **arrays))


def _load_tune(path, fingerprint: str, like, caller: str):
  """``(step, trees shaped like like, best_loss, losses)`` from a checkpoint, or None if there is none."""
  f = load_checkpoint(path, fingerprint, caller, "other network data, batches, T or settings")
  if f is None:
    return None
  leaves, treedef = jax.tree_util.tree_flatten(like)
  restored = [jnp.asarray(f[f"leaf:{i}"], dtype=jnp.asarray(leaf).dtype) for i, leaf in enumerate(leaves)]
  return (int(f["step"]), jax.tree_util.tree_unflatten(treedef, restored), float(f["best_loss"]),
          [float(v) for v in f["losses"]])


def _ann_logits(snn: SpikingNetwork, x):
  """The ANN's logits for ``x``."""
  return _logits(snn.traced, snn.variables, x).astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def _logits(traced: ir.Traced, variables, x):
  program = ir.build_program(traced.fn, variables, x, caller="jaxsnn.tune_snn")
  return ir.site_values(program, variables, x)[1]
