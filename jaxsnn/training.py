"""Training the ANNs that jaxsnn converts: optax SGD, validation-picked checkpoints, resumable runs.

One run is described by a ``TrainConfig`` (``experiments/configs/*.py`` hold one per dataset and model) and
is jaxsnn's one optimisation loop (the one of :func:`jaxsnn.tune_snn`, :func:`jaxsnn.finetune` and
:func:`jaxsnn.quantize_for_conversion`) over the training split's epochs. It writes into a work dir:

* ``last.jaxsnn`` — the loop's resumable checkpoint (variables with the BatchNorm statistics, optimizer state, best
  variables, losses, scores), a jaxsnn file written atomically every ``checkpoint_every`` steps and at the end of
  every epoch; a killed run restarts from it and continues on exactly the batches an uninterrupted run would have
  seen, to the same bits;
* ``best.jaxsnn`` — the variables (``params``, ``batch_stats``) with the best validation accuracy so far
  (validation = the last ``val_examples`` training images; the test set never picks anything);
* ``metrics.jsonl`` — one JSON object per line: per epoch, and a final test evaluation of the best variables;
* ``config.json`` — the config of the run.

Accuracy and loss of an ANN are measured one way (:func:`ann_metrics`, :func:`ann_accuracy`: the runner's batch
protocol, labels checked). The committed reference networks (``experiments/checkpoints/*.msgpack``, flax msgpack
written before jaxsnn's file format) are still read by :func:`load_variables`.

Example::

    from experiments.configs import fashion_mnist_small_cnn
    summary = train_and_evaluate(fashion_mnist_small_cnn.get_config(), "runs/fmnist")
    variables = load_variables("runs/fmnist/best.jaxsnn")
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import sys
import zipfile
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import flax.linen as nn
from flax.training import train_state

from jaxsnn import data as data_lib
from jaxsnn import models
from jaxsnn._src import files, loop, runner
from jaxsnn._src.ann_metrics import AnnMetrics, ann_accuracy, ann_metrics

__all__ = ["AnnMetrics", "ModelApply", "Run", "TrainConfig", "TrainState", "ann_accuracy", "ann_metrics",
           "best_epoch", "build_model", "checkpoint_files", "create_train_state", "learning_rate_schedule",
           "load_config", "load_run", "load_trained", "load_variables", "make_optimizer", "save_variables",
           "tcmalloc_environ", "train_and_evaluate", "train_step", "use_tcmalloc"]


@dataclasses.dataclass
class TrainConfig:
  """Hyper-parameters of one training run.

  Attributes:
    dataset: a name in ``jaxsnn.data.SPECS``.
    model: a name in ``jaxsnn.models.MODELS``.
    model_kwargs: extra arguments of the model preset (e.g. ``{"width": 0.5}``).
    batch_size: training and evaluation batch size.
    epochs: training epochs.
    schedule: ``"step"`` (lr × ``step_factor`` at each of ``step_epochs``, the paper's recipe), ``"cosine"``
      (linear warmup then cosine decay to 0) or ``"onecycle"`` (optax's cosine one-cycle).
    learning_rate: base (step) or peak (cosine, onecycle) learning rate.
    step_epochs: epochs at which the step schedule multiplies the rate by ``step_factor``.
    step_factor: factor of the step schedule.
    warmup_epochs: linear warmup of the cosine schedule; for onecycle, the rising part.
    momentum: SGD momentum.
    nesterov: Nesterov momentum.
    weight_decay: L2 coefficient added to the gradient of every parameter (as PyTorch's SGD does).
    val_examples: training images held out (the last ones) for validation.
    augment: a key of ``jaxsnn.data.AUGMENTATIONS``.
    fast_conv: train with ``models.conv_im2col_grad`` (faster weight gradients on CPU; same results).
    checkpoint_every: steps between mid-epoch checkpoints (0: only at epoch ends); None (the default): every
      minute of work, every resumable loop's default.
    seed: seeds initialization, data order and augmentation.
    qcfs_levels: None for ReLU; L >= 1 to train with the QCFS activation (``models.qcfs_activation``) in place of
      every ReLU, with one trainable threshold per layer starting at ``qcfs_init_threshold``.
    qcfs_init_threshold: initial QCFS threshold (lambda).
    data_dir: tfds data dir (None: tfds's default).
  """
  dataset: str = "cifar10"
  model: str = "resnet20"
  model_kwargs: dict = dataclasses.field(default_factory=dict)
  batch_size: int = 128
  epochs: int = 200
  schedule: str = "step"
  learning_rate: float = 0.01
  step_epochs: Sequence[int] = (60, 120, 160)
  step_factor: float = 0.2
  warmup_epochs: float = 0.0
  momentum: float = 0.9
  nesterov: bool = False
  weight_decay: float = 5e-4
  val_examples: int = 5000
  augment: str = "cifar"
  fast_conv: bool = False
  checkpoint_every: int | None = None
  seed: int = 0
  qcfs_levels: Optional[int] = None
  qcfs_init_threshold: float = 8.0
  data_dir: Optional[str] = None


# Fields that do not change what a run computes: a resumed run may change them.
_NOT_THE_JOB = ("checkpoint_every", "data_dir")


class TrainState(train_state.TrainState):
  """flax's TrainState plus BatchNorm statistics."""
  batch_stats: Any = None


def build_model(config: TrainConfig, for_training: bool = False) -> nn.Module:
  """The model of a config; with ``for_training`` and ``config.fast_conv``, the fast-gradient convolution.

  Both variants have the same variables; convert and evaluate with ``for_training=False``.
  """
  kwargs = dict(config.model_kwargs)
  kwargs.setdefault("num_classes", data_lib.spec(config.dataset).num_classes)
  if config.qcfs_levels is not None:
    kwargs["act"] = models.qcfs_activation(config.qcfs_levels, config.qcfs_init_threshold)
  if for_training and config.fast_conv:
    kwargs["conv"] = models.FastConv
  return models.get_model(config.model, **kwargs)


@dataclasses.dataclass(frozen=True)
class ModelApply:
  """``model.apply`` as a value that compares by the model's fields (bound methods compare by identity), so that
  jitted functions that take it as a static argument compile once per model configuration, not once per run.

  Attributes:
    model: the flax model.
    train: None, or the ``train=`` every call gets (``ModelApply(model, train=False)`` is the model in inference
      mode as ``apply_fn(variables, x)``, what :func:`jaxsnn.convert` and :func:`ann_metrics` take).
  """
  model: nn.Module
  train: Optional[bool] = None

  def __call__(self, *args, **kwargs):
    if self.train is not None:
      kwargs.setdefault("train", self.train)
    return self.model.apply(*args, **kwargs)


def learning_rate_schedule(config: TrainConfig, iterations_per_epoch: int) -> optax.Schedule:
  """The learning-rate schedule of a config, as a function of the step."""
  total = config.epochs * iterations_per_epoch
  if config.schedule == "step":
    return optax.piecewise_constant_schedule(
        config.learning_rate, {int(e * iterations_per_epoch): config.step_factor for e in config.step_epochs})
  if config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate,
                                              int(config.warmup_epochs * iterations_per_epoch), total)
  if config.schedule == "onecycle":
    pct = config.warmup_epochs / config.epochs if config.warmup_epochs else 0.25
    return optax.cosine_onecycle_schedule(total, config.learning_rate, pct_start=pct, div_factor=25.0,
                                          final_div_factor=1e3)
  raise ValueError(f"learning_rate_schedule: unknown schedule {config.schedule!r}; "
                   "choose 'step', 'cosine' or 'onecycle'")


_OPTIMIZER_FIELDS = ("epochs", "schedule", "learning_rate", "step_epochs", "step_factor", "warmup_epochs",
                     "momentum", "nesterov", "weight_decay")


def make_optimizer(config: TrainConfig, iterations_per_epoch: int) -> optax.GradientTransformation:
  """SGD with momentum and coupled weight decay (L2 on the gradient, as in the authors' PyTorch code).

  Equal hyper-parameters give the same (cached) object: the optimizer is a static argument of the jitted training
  step, so this lets a second run in the same process reuse the compiled step.
  """
  key = tuple((f, tuple(v) if isinstance(v, list) else v) for f in _OPTIMIZER_FIELDS
              for v in [getattr(config, f)])
  return _make_optimizer(key, iterations_per_epoch)


@functools.lru_cache(maxsize=32)
def _make_optimizer(key: tuple, iterations_per_epoch: int) -> optax.GradientTransformation:
  config = TrainConfig(**dict(key))
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(learning_rate_schedule(config, iterations_per_epoch), momentum=config.momentum,
                nesterov=config.nesterov))


def create_train_state(config: TrainConfig, rng: jax.Array, iterations_per_epoch: int) -> TrainState:
  """Initializes parameters, BatchNorm statistics and the optimizer."""
  model = build_model(config, for_training=True)
  x = jnp.zeros((1,) + data_lib.spec(config.dataset).image_shape, jnp.float32)
  variables = model.init(rng, x, train=False)  # eager: jitting init compiles for longer than it runs
  return TrainState.create(apply_fn=ModelApply(model), params=variables["params"],
                           batch_stats=variables.get("batch_stats", {}),
                           tx=make_optimizer(config, iterations_per_epoch))


# Jitted once per (model configuration, optimizer): both static, both equal across runs of one config.
@functools.partial(jax.jit, static_argnums=(0, 1))
def _update(apply: ModelApply, tx: optax.GradientTransformation, variables: dict, opt_state: Any, x, labels, mask):
  """One SGD step of the loop: ``(variables, opt_state, mean loss, {"loss_sum", "correct"})``."""

  def loss_fn(params):
    logits, updates = apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                            mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    loss_sum = jnp.sum(loss * mask)
    correct = jnp.sum((jnp.argmax(logits, -1) == labels) * mask)
    return loss_sum / jnp.sum(mask), (updates.get("batch_stats", {}), loss_sum, correct)

  params = variables["params"]
  grads, (batch_stats, loss_sum, correct) = jax.grad(loss_fn, has_aux=True)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  new = {"params": optax.apply_updates(params, updates), "batch_stats": batch_stats}
  return new, opt_state, loss_sum / jnp.sum(mask), {"loss_sum": loss_sum, "correct": correct}


def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
  """One SGD step on a batch (the step :func:`train_and_evaluate` makes); returns the new state and the batch's
  summed loss and correct count.

  Args:
    state: from :func:`create_train_state`.
    batch: ``{"image", "label", "mask"}`` as :func:`jaxsnn.data.batches` yields.

  Returns:
    ``(state, {"loss": summed loss, "correct": correct count})``.
  """
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  variables, opt_state, _, out = _update(state.apply_fn, state.tx, variables, state.opt_state, batch["image"],
                                         batch["label"], batch["mask"])
  state = state.replace(step=state.step + 1, params=variables["params"], batch_stats=variables["batch_stats"],
                        opt_state=opt_state)
  return state, {"loss": out["loss_sum"], "correct": out["correct"]}


# --- files -------------------------------------------------------------------------------------------------------


def save_variables(path: os.PathLike | str, variables: Any) -> None:
  """Writes a network's variables (``{"params": ..., "batch_stats": ...}``) as a jaxsnn file, atomically.

  Args:
    path: the file (``best.jaxsnn`` in a run's work dir).
    variables: the variables pytree.

  Example:
    >>> training.save_variables("best.jaxsnn", variables)
    >>> restored = training.load_variables("best.jaxsnn")
  """
  files.write(path, "variables", jax.device_get(variables))


def load_variables(path: os.PathLike | str) -> dict:
  """The variables of a trained network: a ``best.jaxsnn`` (:func:`save_variables`), or a flax msgpack file written
  before jaxsnn's file format (the committed ``experiments/checkpoints/*.msgpack``; read only).

  Args:
    path: the file.

  Returns:
    The variables ``{"params": …, "batch_stats": …}`` as JAX arrays.

  Raises:
    jaxsnn.files.FormatError: for a jaxsnn file of another kind, or a damaged one.
  """
  path = pathlib.Path(path)
  if zipfile.is_zipfile(path):
    restored = files.read(path, "variables", caller="jaxsnn.training.load_variables")
  else:
    from flax import serialization  # the legacy format: msgpack, no code executed
    restored = serialization.msgpack_restore(path.read_bytes())
  return jax.tree.map(jnp.asarray, restored)


def load_config(path: os.PathLike | str) -> TrainConfig:
  """The ``TrainConfig`` of a config file: a Python file defining ``get_config()`` (``experiments/configs/*.py``), or
  the ``config.json`` a run writes (``NAME.config.json`` beside a committed checkpoint).

  Raises:
    ValueError: if the file is neither.
  """
  path = pathlib.Path(path)
  if path.suffix == ".json":  # JSON has lists where the config has tuples
    return TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(path.read_text()).items()})
  if path.suffix != ".py":
    raise ValueError(f"load_config: {os.fspath(path)!r} is neither a config file (.py with get_config()) nor a run's "
                     "config.json.")
  import importlib.util
  spec = importlib.util.spec_from_file_location(f"jaxsnn_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"load_config: {os.fspath(path)!r} defines no get_config().")
  return module.get_config()


_VARIABLE_SUFFIXES = (".jaxsnn", ".msgpack")  # this format's, then the legacy one's


def checkpoint_files(path: os.PathLike | str) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
  """``(config, variables, metrics)`` paths of a run directory (``config.json``, ``best.jaxsnn``, ``metrics.jsonl``)
  or of a saved checkpoint ``NAME[.jaxsnn|.msgpack]`` (``NAME.config.json``, ``NAME.jaxsnn`` or the legacy
  ``NAME.msgpack``, ``NAME.metrics.jsonl``, as in ``experiments/checkpoints/``).

  Raises:
    FileNotFoundError: naming the missing files.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    variables = [path / f"best{s}" for s in _VARIABLE_SUFFIXES]
    config, metrics = path / "config.json", path / "metrics.jsonl"
  else:
    stem = next((str(path)[:-len(s)] for s in _VARIABLE_SUFFIXES if path.name.endswith(s)), str(path))
    variables = [pathlib.Path(stem + s) for s in _VARIABLE_SUFFIXES]
    config, metrics = pathlib.Path(stem + ".config.json"), pathlib.Path(stem + ".metrics.jsonl")
  found = next((v for v in variables if v.is_file()), variables[0])
  files_ = config, found, metrics
  missing = [str(f) for f in files_ if not f.is_file()]
  if missing:
    raise FileNotFoundError(
        f"{os.fspath(path)}: missing {', '.join(missing)}. Pass a run directory of experiments/train.py (config.json, "
        "best.jaxsnn, metrics.jsonl) or a saved checkpoint such as experiments/checkpoints/cifar10_resnet20 "
        "(.msgpack or .jaxsnn, .config.json, .metrics.jsonl).")
  return files_


def load_trained(path: os.PathLike | str) -> tuple[TrainConfig, nn.Module, dict]:
  """A trained network: its config, its (convertible) model and its variables, from a run directory or a saved
  checkpoint (see :func:`checkpoint_files`).

  Example:
    >>> config, model, variables = training.load_trained("experiments/checkpoints/cifar10_resnet20")
    >>> logits = model.apply(variables, x, train=False)
  """
  config_file, variables_file, _ = checkpoint_files(path)
  config = load_config(config_file)
  variables = load_variables(variables_file)
  return config, build_model(config), {k: v for k, v in variables.items() if k in ("params", "batch_stats")}


# --- the run -----------------------------------------------------------------------------------------------------


def _epoch_lines(path: pathlib.Path, before: int | None = None) -> list[dict]:
  """The metrics lines of ``path`` (``before``: without the epoch lines of epochs >= before)."""
  if not path.exists():
    return []
  lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  return [r for r in lines if before is None or "final" in r or r.get("epoch", -1) < before]


def _write_lines(path: pathlib.Path, lines: list[dict]) -> None:
  text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in lines)
  files.atomic_write(path, lambda f: f.write(text.encode()))


def train_and_evaluate(config: TrainConfig, workdir: os.PathLike | str, *,
                       arrays: Optional[dict[str, data_lib.Arrays]] = None, progress: bool = True,
                       max_iterations: Optional[int] = None) -> dict:
  """Trains (or resumes) a run in ``workdir`` and evaluates its best variables on the test set.

  Args:
    config: the run's hyper-parameters.
    workdir: where checkpoints and metrics go; an existing ``last.jaxsnn`` there is resumed (when it belongs to the
      same run: the same config, apart from ``checkpoint_every`` and ``data_dir``, and the same data).
    arrays: ``{"train", "validation", "test"}`` splits in memory (default: loaded through tfds).
    progress: show a tqdm progress bar with throughput.
    max_iterations: stop after this many iterations in total (for tests and time-boxed runs; resumable).

  Returns:
    The final record: best validation accuracy and its epoch, test loss/accuracy/count, and the seconds spent
    in completed training epochs over all sessions of the run.

  Raises:
    ValueError: for an unknown augmentation, labels outside the model's classes, or a ``last.jaxsnn`` of another
      run.
    jaxsnn.NonFiniteLossError: when a training loss is NaN or infinite (the checkpoint keeps the step before).
  """
  caller = "jaxsnn.training.train_and_evaluate"
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  spec = data_lib.spec(config.dataset)
  if arrays is None:
    names = data_lib.splits(config.dataset, config.val_examples)
    arrays = {k: data_lib.load(config.dataset, s, config.data_dir) for k, s in names.items()}
  if config.augment not in data_lib.AUGMENTATIONS:
    raise ValueError(f"train_and_evaluate: unknown augment {config.augment!r}; "
                     f"choose one of {sorted(data_lib.AUGMENTATIONS)}")
  augment = data_lib.AUGMENTATIONS[config.augment]
  classes = config.model_kwargs.get("num_classes", spec.num_classes)
  for name, split in arrays.items():
    runner.check_labels(np.asarray(split.labels), classes, f"{caller} ({name} split)")
  if (workdir / "last.msgpack").exists() and not (workdir / "last.jaxsnn").exists():
    raise ValueError(f"{caller}: {workdir / 'last.msgpack'} is an unfinished run of a jaxsnn before its file format; "
                     "finish it with that version, or delete it to start again.")
  per = data_lib.num_batches(len(arrays["train"].labels), config.batch_size, train=True)
  total = config.epochs * per
  files.write_json(workdir / "config.json", dict(sorted(dataclasses.asdict(config).items())))  # atomic

  state = create_train_state(config, jax.random.key(config.seed), per)
  eval_apply = ModelApply(build_model(config), train=False)
  last, best, metrics = workdir / "last.jaxsnn", workdir / "best.jaxsnn", workdir / "metrics.jsonl"
  schedule = learning_rate_schedule(config, per)

  def measure(variables, split: str) -> AnnMetrics:
    return ann_metrics(eval_apply, variables, data_lib.batches(arrays[split], config.batch_size, train=False,
                                                                mean=spec.mean, std=spec.std), caller=caller)

  def on_epoch(end: loop.EpochEnd) -> Optional[float]:
    count = per * config.batch_size
    record = {"epoch": end.epoch, "step": end.step, "lr": float(schedule(end.step - 1)),
              "epoch_seconds": round(end.seconds, 1),
              "train_images_per_s": round(end.session_steps * config.batch_size / end.seconds, 1),
              "train_loss": float(np.sum(end.aux["loss_sum"])) / count,
              "train_accuracy": float(np.sum(end.aux["correct"])) / count, "train_count": count}
    score = None
    if "validation" in arrays:
      val = measure(end.params, "validation")
      record.update(val_loss=val.loss, val_accuracy=val.accuracy, val_count=val.count)
      score = val.accuracy
    if score is None or score > end.best_score:  # without validation, the last epoch is the result
      save_variables(best, end.params)
    # A session killed after this line and before the epoch's checkpoint runs the epoch's end again: one line each.
    _write_lines(metrics, _epoch_lines(metrics, before=end.epoch) + [record])
    if progress:
      from tqdm.auto import tqdm
      tqdm.write(json.dumps(record))
    return score

  def prepare(batch: dict) -> tuple:
    return batch["image"], batch["label"], batch["mask"]

  about = {k: v for k, v in dataclasses.asdict(config).items() if k not in _NOT_THE_JOB}
  job = files.fingerprint(caller, json.dumps(about, sort_keys=True), per, sorted(arrays),
                          arrays=[(arrays[k].images, arrays[k].labels) for k in ("train", "validation")
                                  if k in arrays])
  epochs = data_lib.epochs(arrays["train"], config.batch_size, mean=spec.mean, std=spec.std, seed=config.seed,
                           augment=augment)
  steps = total if max_iterations is None else min(total, max_iterations)
  result = loop.optimize(
      functools.partial(_update, state.apply_fn, state.tx), {"params": state.params, "batch_stats": state.batch_stats},
      state.opt_state, epochs, steps, caller=caller, prepare=prepare, has_aux=True, on_epoch=on_epoch,
      progress=progress, desc=f"train {config.model}", examples_per_step=config.batch_size, checkpoint=last,
      checkpoint_every=total + 1 if config.checkpoint_every == 0 else config.checkpoint_every, fingerprint=job,
      differs="another config or other data", postfix=lambda info: {"epoch": info["epoch"], "loss": info["loss"],
                                                                    **({"val": info["best"]} if "best" in info else {})})
  step = len(result["losses"])
  scores = result["history"]
  best_step = max(scores, key=lambda h: h[1])[0] if scores else (step // per) * per
  lines = _epoch_lines(metrics)
  summary = {"epochs_done": step // per, "step": step, "best_epoch": best_step // per - 1 if step >= per else -1,
             "best_val_accuracy": float(result["best_score"]) if scores else None, "stopped_early": step < total,
             "train_seconds": round(sum(r.get("epoch_seconds", 0.0) for r in lines if "final" not in r), 1)}
  if step == total and best.exists() and "test" in arrays:
    test = measure(result["params"], "test")
    summary.update(test_loss=test.loss, test_accuracy=test.accuracy, test_count=test.count)
  summary["final"] = True
  _write_lines(metrics, lines + [summary])
  return summary


# --- the CPU allocator ------------------------------------------------------------------------------------------

TCMALLOC = "libtcmalloc_minimal.so.4"
"""The tcmalloc library :func:`use_tcmalloc` preloads (Debian/Ubuntu package ``libtcmalloc-minimal4``)."""
TCMALLOC_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")


def tcmalloc_environ(environ, search_dirs=TCMALLOC_DIRS) -> Optional[dict]:
  """The environment to re-execute with tcmalloc preloaded, or None when it is off (``JAXSNN_MALLOC=system``),
  missing or already loaded.

  Args:
    environ: the current environment.
    search_dirs: where to look for :data:`TCMALLOC`.

  Returns:
    A new environment, or None.
  """
  if environ.get("JAXSNN_MALLOC", "tcmalloc") == "system" or "tcmalloc" in environ.get("LD_PRELOAD", ""):
    return None
  for directory in search_dirs:
    path = os.path.join(directory, TCMALLOC)
    if os.path.isfile(path):
      env = dict(environ)
      env["LD_PRELOAD"] = ":".join(p for p in (path, environ.get("LD_PRELOAD", "")) if p)
      env.setdefault("TCMALLOC_RELEASE_RATE", "0")  # keep freed pages: the next step reuses them
      return env
  return None


def use_tcmalloc() -> None:
  """Re-executes the running script with tcmalloc preloaded when it is installed (Linux); else returns.

  Why: XLA:CPU allocates and frees its temporary buffers on every training step; under glibc's malloc, buffers above
  the mmap threshold (the im2col and activation buffers of a CIFAR batch) are mapped and unmapped each time, so every
  step page-faults its working set back in. tcmalloc keeps them (the numbers computed are the same: the allocator only
  changes where buffers live). Call it first thing in a training script's ``main()``; ``JAXSNN_MALLOC=system`` keeps
  the system allocator.
  """
  if not sys.platform.startswith("linux"):
    return
  env = tcmalloc_environ(os.environ)
  if env is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


# --- a trained network with its data ---------------------------------------------------------------------------

@dataclasses.dataclass
class Run:
  """A trained network with its data: what a conversion experiment starts from (:func:`load_run`).

  Attributes:
    name: the checkpoint's name.
    config: its :class:`TrainConfig`.
    model: the Flax model.
    apply_fn: ``apply_fn(variables, x)`` in eval mode.
    variables: its variables.
    train: :class:`jaxsnn.data.Arrays` of the training split (validation held out): thresholds come from here only.
    validation: the validation split (the last ``val_examples`` training images): choices only; None if none.
    test: the test split.
    spec: the dataset's :class:`jaxsnn.data.DatasetSpec`.
  """

  name: str
  config: Any
  model: Any
  apply_fn: Callable
  variables: Any
  train: Any
  validation: Any
  test: Any
  spec: Any

  def normalize(self, images):
    """The images normalised as the network was trained (its dataset's mean and std)."""
    return data_lib.normalize(images, self.spec.mean, self.spec.std)

  def batches(self, arrays: data_lib.Arrays, batch_size: int):
    """``{"image", "label", "mask"}`` batches of ``arrays`` in order (the last one padded and masked), normalised.

    Args:
      arrays: a split (e.g. ``run.test``, or its first images ``run.test.first(1000)``).
      batch_size: examples per batch.

    Returns:
      An iterator of batches (:func:`jaxsnn.data.batches`).
    """
    return data_lib.batches(arrays, batch_size, train=False, mean=self.spec.mean, std=self.spec.std)

  def train_batches(self, num_examples: int, batch_size: int) -> list:
    """The first ``num_examples`` training images as batches, in memory: what thresholds, calibration and every
    low-latency tool of the conversion studies read (never a validation or test image).

    Args:
      num_examples: training images.
      batch_size: examples per batch.

    Returns:
      A list of batches.
    """
    return list(self.batches(self.train.first(num_examples), batch_size))

  def ann_accuracy(self, arrays: data_lib.Arrays, batch_size: int = 200) -> float:
    """The network's accuracy on ``arrays`` (:func:`ann_accuracy`).

    Args:
      arrays: a split.
      batch_size: examples per batch read.

    Returns:
      The fraction classified right.
    """
    return ann_accuracy(self.apply_fn, self.variables, self.batches(arrays, batch_size))


def load_run(run: os.PathLike | str, data_dir: Optional[str] = None) -> Run:
  """A committed checkpoint or a run directory of :func:`train_and_evaluate`, its model, and its dataset's train,
  validation and test splits (through tfds).

  Args:
    run: the checkpoint (``NAME`` beside ``NAME.config.json``) or the run directory.
    data_dir: tfds's data dir (default: the run's, else tfds's own).

  Returns:
    A :class:`Run`.

  Raises:
    FileNotFoundError: if there is no such checkpoint.
  """
  config, model, variables = load_trained(run)
  split = data_lib.splits(config.dataset, config.val_examples)
  load = functools.partial(data_lib.load, config.dataset, data_dir=data_dir or config.data_dir)
  checkpoint = checkpoint_files(run)[1]
  name = pathlib.Path(run).name if checkpoint.stem == "best" else checkpoint.stem
  return Run(name, config, model, ModelApply(model, train=False), variables, load(split["train"]),
             load(split["validation"]) if "validation" in split else None, load(split["test"]),
             data_lib.spec(config.dataset))


def best_epoch(run: os.PathLike | str) -> dict:
  """The metrics line of the run's best validation accuracy (the epoch its variables hold).

  Args:
    run: as in :func:`load_run`.

  Returns:
    That line of ``metrics.jsonl`` (empty if none has a validation accuracy).
  """
  lines = checkpoint_files(run)[2].read_text().splitlines()
  metrics = [json.loads(line) for line in lines if line.strip()]
  return max((m for m in metrics if "val_accuracy" in m), key=lambda m: m["val_accuracy"], default={})
