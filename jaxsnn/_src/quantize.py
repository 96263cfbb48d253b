"""Conversion-aware fine-tuning of a trained ReLU network, by a rewrite of its traced program.

:func:`quantize_for_conversion` traces the user's ``apply_fn(variables, x)`` (Flax linen, NNX, Equinox or plain JAX:
the model's code is never touched), and returns a new apply function whose program is the same with every ReLU site
replaced by ``jaxsnn.qcfs(z, λ_site, levels)`` (Bu et al., ICLR 2022), trainable λ's (per neuron, channel or site)
initialised from a percentile of the site's activations on training data; then it fine-tunes the weights and the λ's
with optax through the library's one optimisation loop (:func:`jaxsnn._src.loop.optimize`): the labels'
cross-entropy and/or a distillation from the ReLU network's own logits, the best iterate on validation accuracy of
the quantised ANN, resumable. The result converts with :func:`jaxsnn.recipes.quantized` directly (λ as thresholds,
θ/2, ...): at T = levels steps from a constant current a QCFS neuron's spike count is exactly the ANN's level.

Why a rewrite of the program and not of the model: the converter already finds every ReLU site in the jaxpr
(:mod:`jaxsnn._src.ir`); walking that program with a site rule that quantises is the same walk as calibration's and the
simulator's, so whatever converts, quantises, in any model style. Every other operation is run as it is (BatchNorm in
eval mode included: its statistics are one more affine map).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsnn._src import checks, ir, loop, runner
from jaxsnn._src.ann_metrics import ann_metrics
from jaxsnn._src.batches import as_batch, check_batches
from jaxsnn._src.calibrate import calibrate
from jaxsnn._src.checks import DEFAULT_GRANULARITY
from jaxsnn._src.files import fingerprint
from jaxsnn._src.norms import site_percentiles
from jaxsnn._src.qcfs import qcfs
from jaxsnn._src.reports import Report

LOSSES = ("labels", "distill", "both")
"""What :func:`quantize_for_conversion` minimises: the labels' cross-entropy, the distillation from the ReLU network
(KL divergence of the quantised network's softmax from the ReLU network's, at ``temperature``), or their mean."""
STATISTICS = ("batch_stats", "mean", "var")
"""Key names of the variables that :func:`default_trainable` leaves frozen: BatchNorm's running statistics (Flax
linen's ``batch_stats`` collection; NNX's and linen's ``mean`` / ``var`` leaves)."""


# ----------------------------------------------------------------------------------------------------------------
# The quantised network: its variables and its apply function.
# ----------------------------------------------------------------------------------------------------------------

def _children(tree) -> tuple[list, Any]:
  """The immediate children of ``tree`` with their keys, and the one-level treedef that puts them back."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda n: n is not tree)
  return [(path[0] if path else jax.tree_util.FlattenedIndexKey(0), child) for path, child in flat], treedef


@jax.tree_util.register_pytree_with_keys_class
@dataclasses.dataclass(frozen=True)
class QuantizedVariables:
  """The variables of a network made by :func:`quantize_for_conversion`.

  Attributes:
    variables: the ANN's variables (their array leaves; an Equinox module's other leaves are None here: the apply
      function holds them).
    thresholds: ``{site: λ}``, float32 of the site's shape without the batch axis per QCFS site (``[channels]``
      with ``granularity="channel"``, a scalar with ``"layer"``), keyed by the site names of the converted network
      (``snn.site_names``): the ANN's module paths, ``".../qcfs"``.

  As a pytree, the leaves of ``variables`` keep the key paths they have in the ANN's own variables (and each λ is one
  more child): every name that jaxsnn derives from a variable's path stays the ANN's.
  """

  variables: Any
  thresholds: dict

  def tree_flatten_with_keys(self):
    children, top = _children(self.variables)
    lams = [(jax.tree_util.DictKey(f"λ:{name}"), value) for name, value in self.thresholds.items()]
    return children + lams, (top, len(children), tuple(self.thresholds))

  @classmethod
  def tree_unflatten(cls, aux, children):
    top, n, names = aux
    children = list(children)
    return cls(jax.tree_util.tree_unflatten(top, children[:n]), dict(zip(names, children[n:])))


def _module(name: str) -> str:
  """The module path of a site or max site named ``"<module path>/<kind>[_k]"``."""
  return name.rsplit("/", 1)[0] if "/" in name else ""


@dataclasses.dataclass(frozen=True, eq=False)
class QuantizedApply:
  """``apply(variables_q, x) -> logits``: the ANN's program with every ReLU site quantised (from
  :func:`quantize_for_conversion`).

  The program is traced from the ANN's own function for every input shape; a final softmax or log_softmax of the ANN
  (which changes no argmax) is left out: the function returns the logits.

  Attributes:
    fn: the ANN's apply function (over the variables' array leaves).
    levels: L of every quantised site.
    sites: ``((ReLU site name, QCFS site name), ...)`` in network order.
  """

  fn: Callable
  levels: int
  sites: tuple

  def __post_init__(self):
    object.__setattr__(self, "_jitted", jax.jit(self.apply))
    object.__setattr__(self, "__name__", f"quantized_{getattr(self.fn, '__name__', 'apply')}")

  def __call__(self, variables: QuantizedVariables, x):
    return self._jitted(variables, x)

  def apply(self, variables: QuantizedVariables, x, relu: bool = False):
    """The quantised network's logits (not jitted: for use inside a jitted function); ``relu=True``: the original
    ReLU network's, on ``variables.variables``."""
    program = ir.build_program(self.fn, variables.variables, x, caller="jaxsnn.quantize_for_conversion")
    names = dict(self.sites)

    def site(s: ir.Site, args):
      with jax.named_scope(_module(names.get(s.name, s.name))) if _module(s.name) else _nothing():
        if s.kind == ir.RELU and not relu:
          return qcfs(args[0], variables.thresholds[names[s.name]], self.levels)
        if s.kind == ir.QCFS:  # a QCFS site of the ANN itself: kept, with its straight-through gradient
          return qcfs(args[0], args[1], s.levels)
        return ir.ann_activation(s, args)

    def op(o: ir.Op, args):
      with jax.named_scope(o.scope) if o.scope else _nothing():
        return o.bind(*args)

    def max_site(m: ir.MaxSite, args):
      with jax.named_scope(_module(m.name)) if _module(m.name) else _nothing():
        return m.op.bind(*args)[0]

    env = ir.walk(program, ir.initial_env(program, variables.variables, x), op_rule=op, site_rule=site,
                  max_rule=max_site)
    return jnp.asarray(ir.read(env, program.out))


class _nothing:
  def __enter__(self):
    return None

  def __exit__(self, *exc):
    return False


# ----------------------------------------------------------------------------------------------------------------
# Which leaves train.
# ----------------------------------------------------------------------------------------------------------------

def default_trainable(path: tuple, leaf) -> bool:
  """The default of :func:`quantize_for_conversion`'s ``trainable``: every floating-point leaf but BatchNorm's running
  statistics (a key in :data:`STATISTICS` on its path).

  Why the statistics stay: in eval mode BatchNorm is ``(x - mean) * rsqrt(var + eps) * scale + bias``; scale and bias
  already span every affine map per channel, and a trained variance can cross ``-eps`` (Adam moves every leaf by about
  the learning rate per step, whatever its size), where ``rsqrt`` is NaN.
  """
  keys = {str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path}
  return bool(jnp.issubdtype(jnp.result_type(leaf), jnp.floating)) and not keys & set(STATISTICS)


# ----------------------------------------------------------------------------------------------------------------
# The fine-tuning.
# ----------------------------------------------------------------------------------------------------------------

def _initial_thresholds(apply_fn, variables, batches, program: ir.Program, percentile: float, progress: bool,
                        input_key: str) -> tuple[dict, int]:
  """λ per ReLU site: the ``percentile`` of the site's positive activations on ``batches`` (its max where that is 0,
  1.0 for a site that never fires), and the number of examples read."""
  stats = calibrate(apply_fn, variables, batches, histogram=True, progress=progress, input_key=input_key)
  pct = site_percentiles(stats, percentile)
  out = {}
  for s in program.sites:
    if s.kind != ir.RELU:
      continue
    value = pct[s.name] if pct[s.name] > 0 else float(np.max(np.asarray(stats.max[s.name])))
    out[s.name] = value if value > 0 else 1.0
  return out, stats.num_samples


def _accuracy(apply: Callable, params_to_variables: Callable, batches: list, input_key: str) -> Callable:
  """``accuracy(params)`` of the quantised network on labelled ``batches``: jaxsnn's one ANN accuracy."""
  def accuracy(params):
    return ann_metrics(apply, params_to_variables(params), batches, input_key=input_key,
                       caller="jaxsnn.quantize_for_conversion: validation").accuracy

  return accuracy


def quantize_for_conversion(apply_fn: Callable, variables: Any, train_batches: Iterable[Any], *, levels: int,
                            iterations: int, validation: Iterable[Any] | None = None, loss: str = "distill",
                            temperature: float = 1.0, optimizer: optax.GradientTransformation | None = None,
                            learning_rate: float = 1e-3, percentile: float = 99.9,
                            granularity: str = DEFAULT_GRANULARITY,
                            calibration: Iterable[Any] | None = None,
                            trainable: Callable[[tuple, Any], bool] = default_trainable, validate_every: int = 200,
                            progress: bool = False, checkpoint=None, checkpoint_every: int | None = None,
                            input_key: str = "image") -> tuple[Callable, Any, Report]:
  """Quantises a trained ReLU network for conversion: every ReLU site becomes a QCFS activation with a trainable λ,
  then the weights and the λ's are fine-tuned.

  The network is traced from ``apply_fn`` (any model style; no change to its code) and rewritten: each ReLU site
  (``jax.nn.relu``, ``nn.relu``, ``max(x, 0)``, ``where(x > 0, x, 0)``) becomes ``jaxsnn.qcfs(z, λ, levels)``, with
  λ per neuron, channel or site (``granularity``; a layer's scalar as in Bu et al. 2022 with ``"layer"``) initialised
  to the ``percentile`` of the site's positive activations on ``calibration``; every other operation is kept
  (BatchNorm in eval mode: see :func:`default_trainable`). The weights and λ's are then trained with ``optimizer``
  for ``iterations`` updates on
  ``train_batches`` (cycled in epochs), with the straight-through gradient of the QCFS primitive. ``loss``:
  ``"distill"`` (the KL divergence from the ReLU network's softmax at ``temperature``, no labels needed),
  ``"labels"`` (cross-entropy) or ``"both"`` (their mean).

  The result converts directly: ``jaxsnn.recipes.quantized(apply_q, variables_q, train_batches, num_steps=T)``; its
  sites keep the ANN's module paths (``".../qcfs"``).

  Args:
    apply_fn: ``apply_fn(variables, x) -> logits`` of the trained ReLU ANN (eval mode: BatchNorm with running
      averages, deterministic dropout).
    variables: its variables.
    train_batches: training batches for the updates (any form of the batch protocol; labelled for
      ``loss="labels"`` or ``"both"``), cycled in epochs: :func:`jaxsnn.data.epochs` gives each epoch's own shuffle
      and augmentations (and a resumed run only the batches it has not used), a re-iterable is iterated afresh every
      epoch, a one-shot iterator is read once and its batches kept in memory and replayed. Never the test set.
    levels: L >= 1, the quantisation levels of every site (the SNN is exact at T = L from constant currents).
    iterations: the optimiser's updates (0: the λ's initialisation only).
    validation: labelled held-out batches (never the test set): the quantised ANN's accuracy is measured there at the
      start, every ``validate_every`` iterations and at the end, and the best iterate is returned. None: the last
      one.
    loss: ``"distill"``, ``"labels"`` or ``"both"``.
    temperature: the distillation's softmax temperature (its loss is scaled by ``temperature**2``).
    optimizer: an optax transformation (default: Adam with ``learning_rate`` decayed to 0 over ``iterations`` by a
      cosine). Pass the same one again to resume (it is not part of the checkpoint's fingerprint).
    learning_rate: the default optimizer's peak rate.
    percentile: λ's initial value, a percentile of each site's positive activations.
    granularity: ``"neuron"`` (the default: one λ per neuron, the site's shape), ``"channel"`` (one per channel of
      the site, its last axis) or ``"layer"`` (one per site, as Bu et al. 2022 and the recipes); each λ starts at its
      layer's percentile.
    calibration: the batches of that statistic (default ``train_batches``, which must then be finite and
      re-iterable: a list, not a generator of endless epochs).
    trainable: ``trainable(path, leaf) -> bool``: which leaves of ``variables`` train (``path``: the leaf's key path
      in ``variables``); the λ's always train.
    validate_every: iterations between validations.
    progress: tqdm bars.
    checkpoint: a file path: the loop's state is written atomically every ``checkpoint_every`` iterations and at the
      end;
      a call with the same network, settings and data resumes from it and returns what an uninterrupted call returns.
    checkpoint_every: iterations between checkpoint writes; None (the default): once a minute of work.
    input_key: the input's key in dict batches.

  Returns:
    ``(apply_q, variables_q, report)``: a :class:`QuantizedApply`, :class:`QuantizedVariables`, and a
    :class:`jaxsnn.Report` (tool ``"quantize_for_conversion"``) whose ``chose`` holds the levels, the loss, the initial
    and trained λ per site (a neuron- or channel-wise λ: its mean) and the validation accuracies (the ReLU ANN's, the
    quantised one's before training and the best), and whose ``details`` hold the loss of every iteration and the
    validation history ``[(iteration, accuracy), ...]``.
    A network without a ReLU site is returned untouched: ``(apply_fn, variables, report)`` with ``chose["sites"]``
    empty.

  Raises:
    jaxsnn.ConversionError: for an operation that has no spiking form (it is named, with its source line and module):
      what would not convert is not quantised either.
    ValueError: for bad arguments, batches without labels where the loss needs them, a ``calibration`` that cannot be
      read twice, or a checkpoint of another job.
    jaxsnn.NonFiniteLossError: when the loss becomes NaN or infinite (the update is not applied).

  Example:
    >>> apply_q, variables_q, report = jaxsnn.quantize_for_conversion(
    ...     apply_fn, variables, train_batches, levels=4, iterations=2000, validation=val_batches)
    >>> snn, recipe = jaxsnn.recipes.quantized(apply_q, variables_q, train_batches, num_steps=4)
  """
  caller = "jaxsnn.quantize_for_conversion"
  t0 = time.perf_counter()
  levels = checks.positive_int(levels, "levels", caller)
  iterations = checks.iterations(iterations, caller)
  validate_every = checks.positive_int(validate_every, "validate_every", caller)
  checkpoint_every = checks.checkpoint_every(checkpoint_every, caller)
  if loss not in LOSSES:
    raise ValueError(f"{caller}: loss must be one of {LOSSES}; got {loss!r}.")
  if not (np.isfinite(temperature) and temperature > 0):
    raise ValueError(f"{caller}: temperature must be > 0; got {temperature!r}.")
  if not 0 < percentile <= 100:
    raise ValueError(f"{caller}: percentile must be in (0, 100]; got {percentile!r}.")
  checks.granularity(granularity, caller)
  check_batches(train_batches, caller)
  if calibration is None:
    if isinstance(train_batches, Iterator):
      raise ValueError(f"{caller}: train_batches is a one-shot iterator (e.g. a generator of augmented epochs), which "
                       "cannot also give the calibration statistics of λ's initial values; pass calibration= "
                       "(finite training batches, e.g. the first 10,000 training images).")
    calibration = train_batches
  check_batches(calibration, f"{caller}: calibration")
  calibration = list(calibration) if isinstance(calibration, Iterator) else calibration

  fn, arrays = ir.split_variables(apply_fn, variables)
  example = next((as_batch(item, caller, input_key).x for item in calibration), None)
  if example is None:
    raise ValueError(f"{caller}: calibration is empty; pass training batches.")
  program, traced = ir.trace(fn, arrays, example, caller=caller)
  relus = [s for s in program.sites if s.kind == ir.RELU]
  if not relus:
    return apply_fn, variables, Report("quantize_for_conversion", {
        "levels": levels, "sites": (), "note": "no ReLU site: the network is returned untouched"},
        seconds=time.perf_counter() - t0)

  t_cal = time.perf_counter()
  initial, calibrated = _initial_thresholds(fn, arrays, calibration, program, percentile, progress, input_key)
  calibration_seconds = time.perf_counter() - t_cal
  # The QCFS sites' names: those the rewritten program gets (the ANN's module paths), read from a trace of it.
  provisional = QuantizedApply(fn, levels, tuple((s.name, s.name) for s in relus))
  start = QuantizedVariables(arrays, {s.name: jnp.float32(initial[s.name]) for s in relus})
  rewritten = ir.build_program(provisional.apply, start, example, caller=caller)
  new = [s.name for s in rewritten.sites]  # in the ANN's site order: the walk keeps it
  if len(new) != len(program.sites) or any(s.kind != ir.QCFS for s in rewritten.sites):
    raise AssertionError(f"{caller}: the rewritten program's sites {new} are not one QCFS site per site of the ANN "
                         f"{[s.name for s in program.sites]}.")
  relu_new = [n for n, s in zip(new, program.sites) if s.kind == ir.RELU]
  apply_q = QuantizedApply(fn, levels, tuple((s.name, n) for s, n in zip(relus, relu_new)))
  def lam(site, value):  # one λ per layer, channel (the site's last axis) or neuron, all from the layer's statistic
    shape = {"layer": (), "channel": tuple(program.avals[site.x].shape[-1:]),
             "neuron": tuple(program.avals[site.x].shape[1:])}[granularity]
    return jnp.full(shape, value, jnp.float32)

  start = QuantizedVariables(arrays, {n: lam(s, initial[s.name]) for s, n in zip(relus, relu_new)})

  names = tuple(n for _, n in apply_q.sites)
  # Trained leaves: the chosen leaves of the variables, and every λ.
  paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(arrays)
  trained = [bool(trainable(path, leaf)) for path, leaf in paths_leaves]
  leaves = [leaf for _, leaf in paths_leaves]
  fixed = [None if t else leaf for leaf, t in zip(leaves, trained)]
  params = {"variables": [leaf for leaf, t in zip(leaves, trained) if t], "lambda": dict(start.thresholds)}

  def variables_of(params) -> QuantizedVariables:
    it = iter(params["variables"])
    tree = jax.tree_util.tree_unflatten(treedef, [next(it) if t else f for t, f in zip(trained, fixed)])
    return QuantizedVariables(tree, {n: params["lambda"][n] for n in names})  # network order, not jit's sorted one

  optimizer_key = ("adam-cosine", float(learning_rate)) if optimizer is None else "the caller's optimizer"
  if optimizer is None:
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, max(iterations, 1)))
  teacher = arrays

  def objective(params, x, labels, mask):
    logits = apply_q.apply(variables_of(params), x)
    logits = logits.astype(jnp.float32).reshape(mask.shape[0], -1)
    terms = []
    if loss in ("labels", "both"):
      terms.append(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    if loss in ("distill", "both"):
      target = jax.lax.stop_gradient(apply_q.apply(QuantizedVariables(teacher, {}), x, relu=True))
      target = target.astype(jnp.float32).reshape(mask.shape[0], -1) / temperature
      student = jax.nn.log_softmax(logits / temperature)
      terms.append(temperature ** 2 * jnp.sum(jax.nn.softmax(target) * (jax.nn.log_softmax(target) - student), -1))
    per = sum(terms) / len(terms)
    return jnp.sum(jnp.where(mask > 0, per, 0.0)) / jnp.maximum(jnp.sum(mask), 1)

  @jax.jit
  def update(params, opt_state, x, labels, mask):
    value, grads = jax.value_and_grad(objective)(params, x, labels, mask)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  classes = checks.classes(tuple(program.aval(program.out).shape[1:]), caller)
  seen = {"examples": 0}

  def prepare(item):
    batch = as_batch(item, caller, input_key)
    if loss != "distill":
      if batch.labels is None:
        raise ValueError(f"{caller}: loss={loss!r} needs labelled batches; a batch has none (pass (x, labels) "
                         "batches, or use loss='distill').")
      runner.check_labels(batch.labels[batch.mask], classes, caller)
    seen["examples"] += batch.count
    labels = batch.labels if batch.labels is not None else np.zeros(batch.size, np.int32)
    return batch.x, jnp.asarray(labels, jnp.int32), jnp.asarray(batch.mask, jnp.float32)

  score = relu_accuracy = None
  if validation is not None:
    validation = runner.labelled_once(validation, f"{caller}: validation", input_key, classes)
    score = _accuracy(apply_q.apply, variables_of, validation, input_key)
    relu_accuracy = _accuracy(lambda v, x: apply_q.apply(v, x, relu=True), variables_of, validation,
                              input_key)(params)

  job = None
  if checkpoint is not None:
    job = fingerprint(caller, traced.key, levels, iterations, optimizer_key, loss, float(temperature),
                      float(percentile), trained, validation is not None, validate_every,
                      arrays=(leaves, params["lambda"], validation or ()))
  t_loop = time.perf_counter()
  result = loop.optimize(update, params, optimizer.init(params), train_batches, iterations, caller=caller,
                         prepare=prepare, score=score, score_every=validate_every, progress=progress,
                         desc=f"quantize L={levels}", checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                         fingerprint=job, differs="other network data, batches or settings")
  variables_q = variables_of(result["params"])
  history = result["history"]
  chose = {"levels": levels, "sites": tuple(n for _, n in apply_q.sites), "loss": loss, "iterations": iterations,
           "epochs": result["epochs"] if iterations else 0, "trained_leaves": sum(trained),
           "initial_lambda": {n: float(initial[o]) for o, n in apply_q.sites},
           "lambda": {n: float(np.mean(np.asarray(v))) for n, v in variables_q.thresholds.items()},
           "percentile": percentile, "granularity": granularity}
  if validation is not None:
    chose.update(relu_validation_accuracy=relu_accuracy, initial_validation_accuracy=history[0][1],
                 best_validation_accuracy=result["best_score"])
  report = Report("quantize_for_conversion", chose, examples=seen["examples"],
                  details={"losses": result["losses"], "validation": history, "calibration_examples": calibrated,
                           "calibration_seconds": calibration_seconds,
                           "training_seconds": time.perf_counter() - t_loop},
                  seconds=time.perf_counter() - t0)
  return apply_q, variables_q, report
