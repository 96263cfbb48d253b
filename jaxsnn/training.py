"""Training the ANNs that jaxsnn converts: optax SGD, validation-picked checkpoints, resumable runs.

One run is described by a ``TrainConfig`` (``experiments/configs/*.py`` hold one per dataset and model) and
writes into a work dir:

* ``last.msgpack`` — the full training state (params, batch stats, optimizer state, step), written atomically
  (temporary file + ``os.replace``) every ``checkpoint_every`` steps and at the end of every epoch; a killed
  run restarts from it and continues on exactly the batches an uninterrupted run would have seen;
* ``best.msgpack`` — the variables (``params``, ``batch_stats``) with the best validation accuracy so far
  (validation = the last ``val_examples`` training images; the test set never picks anything);
* ``metrics.jsonl`` — one JSON object per line: per epoch, and a final test evaluation of ``best.msgpack``;
* ``config.json`` — the config of the run.

Example::

    from experiments.configs import fashion_mnist_small_cnn
    summary = train_and_evaluate(fashion_mnist_small_cnn.get_config(), "runs/fmnist")
    variables = load_variables("runs/fmnist/best.msgpack")
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import sys
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import flax.linen as nn
from flax import serialization
from flax.training import train_state

from jaxsnn import data as data_lib
from jaxsnn._src import runner
from jaxsnn._src.files import atomic_write
from jaxsnn import models

__all__ = ["JsonlWriter", "ModelApply", "TrainConfig", "TrainState", "build_model", "checkpoint_files",
           "create_train_state", "eval_step", "evaluate", "learning_rate_schedule", "load_config", "load_trained",
           "load_variables", "make_optimizer", "restore_checkpoint", "save_checkpoint", "tcmalloc_environ", "Run",
           "best_epoch", "load_run",
           "train_and_evaluate", "train_step", "use_tcmalloc"]


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
    checkpoint_every: steps between mid-epoch checkpoints (0: only at epoch ends).
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
  checkpoint_every: int = 100
  seed: int = 0
  qcfs_levels: Optional[int] = None
  qcfs_init_threshold: float = 8.0
  data_dir: Optional[str] = None


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
  jitted steps that take it as a static argument compile once per model configuration, not once per run."""
  model: nn.Module

  def __call__(self, *args, **kwargs):
    return self.model.apply(*args, **kwargs)


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
  """The learning-rate schedule of a config, as a function of the step."""
  total = config.epochs * steps_per_epoch
  if config.schedule == "step":
    return optax.piecewise_constant_schedule(
        config.learning_rate, {int(e * steps_per_epoch): config.step_factor for e in config.step_epochs})
  if config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate,
                                              int(config.warmup_epochs * steps_per_epoch), total)
  if config.schedule == "onecycle":
    pct = config.warmup_epochs / config.epochs if config.warmup_epochs else 0.25
    return optax.cosine_onecycle_schedule(total, config.learning_rate, pct_start=pct, div_factor=25.0,
                                          final_div_factor=1e3)
  raise ValueError(f"learning_rate_schedule: unknown schedule {config.schedule!r}; "
                   "choose 'step', 'cosine' or 'onecycle'")


_OPTIMIZER_FIELDS = ("epochs", "schedule", "learning_rate", "step_epochs", "step_factor", "warmup_epochs",
                     "momentum", "nesterov", "weight_decay")


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD with momentum and coupled weight decay (L2 on the gradient, as in the authors' PyTorch code).

  Equal hyper-parameters give the same (cached) object: the optimizer is static data of the train state, so
  this lets a second run in the same process reuse the compiled training step.
  """
  key = tuple((f, tuple(v) if isinstance(v, list) else v) for f in _OPTIMIZER_FIELDS
              for v in [getattr(config, f)])
  return _make_optimizer(key, steps_per_epoch)


@functools.lru_cache(maxsize=32)
def _make_optimizer(key: tuple, steps_per_epoch: int) -> optax.GradientTransformation:
  config = TrainConfig(**dict(key))
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(learning_rate_schedule(config, steps_per_epoch), momentum=config.momentum,
                nesterov=config.nesterov))


def create_train_state(config: TrainConfig, rng: jax.Array, steps_per_epoch: int) -> TrainState:
  """Initializes parameters, BatchNorm statistics and the optimizer."""
  model = build_model(config, for_training=True)
  x = jnp.zeros((1,) + data_lib.spec(config.dataset).image_shape, jnp.float32)
  variables = model.init(rng, x, train=False)  # eager: jitting init compiles for longer than it runs
  return TrainState.create(apply_fn=ModelApply(model), params=variables["params"],
                           batch_stats=variables.get("batch_stats", {}),
                           tx=make_optimizer(config, steps_per_epoch))


def _loss_and_correct(logits, labels, mask):
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = jnp.argmax(logits, -1) == labels
  return jnp.sum(loss * mask), jnp.sum(correct * mask)


@functools.partial(jax.jit, donate_argnums=0)
def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
  """One SGD step on a batch; returns the new state and the batch's summed loss and correct count."""

  def loss_fn(params):
    logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                                     train=True, mutable=["batch_stats"])
    loss_sum, correct = _loss_and_correct(logits, batch["label"], batch["mask"])
    return loss_sum / jnp.sum(batch["mask"]), (updates, loss_sum, correct)

  grads, (updates, loss_sum, correct) = jax.grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"])
  return state, {"loss": loss_sum, "correct": correct}


@functools.partial(jax.jit, static_argnums=0)
def eval_step(apply_fn: Callable, variables: Any, batch: dict) -> dict:
  """Summed loss, correct count and example count of a (masked) batch, in eval mode."""
  logits = apply_fn(variables, batch["image"], train=False)
  loss_sum, correct = _loss_and_correct(logits, batch["label"], batch["mask"])
  return {"loss": loss_sum, "correct": correct, "count": jnp.sum(batch["mask"])}


def _classes(apply_fn: Callable, variables: Any, arrays: data_lib.Arrays, caller: str) -> int:
  """The model's number of classes (its output's last axis), and every label of ``arrays`` checked against it."""
  out = jax.eval_shape(lambda v, x: apply_fn(v, x, train=False), variables,
                       jax.ShapeDtypeStruct((1,) + arrays.images.shape[1:], jnp.float32))
  classes = int(out.shape[-1])
  runner.check_labels(np.asarray(arrays.labels), classes, caller)
  return classes


def evaluate(apply_fn: Callable, variables: Any, arrays: data_lib.Arrays, batch_size: int, mean, std, *,
             micro_batch: int = runner.MICRO_BATCH) -> dict:
  """Loss and accuracy over every example of ``arrays`` (computed in micro-batches of ``micro_batch``, the last one
  padded and masked, as :func:`jaxsnn.evaluate`).

  Returns:
    ``{"loss": mean loss, "accuracy": fraction correct, "count": examples counted}``.
  """
  caller = "jaxsnn.training.evaluate"
  classes = _classes(apply_fn, variables, arrays, caller)

  def step(totals, p: runner.Prepared):
    batch = {"image": p.x, "label": jnp.asarray(p.labels), "mask": jnp.asarray(p.mask)}
    out = jax.device_get(eval_step(apply_fn, variables, batch))
    return {k: totals[k] + out[k].item() for k in totals}

  totals, _ = runner.fold(data_lib.batches(arrays, batch_size, train=False, mean=mean, std=std), step,
                          {"loss": 0.0, "correct": 0, "count": 0}, caller=caller, micro_batch=micro_batch,
                          labels="accuracy", classes=classes)
  count = max(totals["count"], 1)
  return {"loss": totals["loss"] / count, "accuracy": totals["correct"] / count, "count": int(totals["count"])}


# --- checkpoints -----------------------------------------------------------------------------------------------


def save_checkpoint(path: os.PathLike | str, target: Any) -> None:
  """Writes a pytree as msgpack atomically: a temporary file in the same dir, then ``os.replace``.

  A write that fails midway (an exception, a full disk) leaves the previous checkpoint intact.
  """
  data = serialization.to_bytes(jax.device_get(target))
  atomic_write(path, lambda f: f.write(data))


def restore_checkpoint(path: os.PathLike | str, target: Any) -> Any:
  """Reads a msgpack checkpoint into the structure of ``target``."""
  return serialization.from_bytes(target, pathlib.Path(path).read_bytes())


def load_variables(path: os.PathLike | str) -> dict:
  """Reads a ``best.msgpack`` as a plain variables dict ``{"params": …, "batch_stats": …}``."""
  restored = serialization.msgpack_restore(pathlib.Path(path).read_bytes())
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


def checkpoint_files(path: os.PathLike | str) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
  """``(config, variables, metrics)`` paths of a run directory (``config.json``, ``best.msgpack``,
  ``metrics.jsonl``) or of a saved checkpoint ``NAME[.msgpack]`` (``NAME.config.json``, ``NAME.msgpack``,
  ``NAME.metrics.jsonl``, as in ``experiments/checkpoints/``).

  Raises:
    FileNotFoundError: naming the missing files.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    files = path / "config.json", path / "best.msgpack", path / "metrics.jsonl"
  else:
    stem = str(path)[:-len(".msgpack")] if path.name.endswith(".msgpack") else str(path)
    files = tuple(pathlib.Path(stem + ext) for ext in (".config.json", ".msgpack", ".metrics.jsonl"))
  missing = [str(f) for f in files if not f.is_file()]
  if missing:
    raise FileNotFoundError(
        f"{os.fspath(path)}: missing {', '.join(missing)}. Pass a run directory of experiments/train.py (config.json, "
        "best.msgpack, metrics.jsonl) or a saved checkpoint such as experiments/checkpoints/cifar10_resnet20 "
        "(.msgpack, .config.json, .metrics.jsonl).")
  return files


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


def _state_target(state: TrainState, epoch: int, batch: int) -> dict:
  return {"state": state, "epoch": epoch, "batch": batch}


class JsonlWriter:
  """Appends JSON lines to a file, flushing each."""

  def __init__(self, path: pathlib.Path):
    self._f = open(path, "a")

  def write(self, record: dict) -> None:
    self._f.write(json.dumps(record, sort_keys=True) + "\n")
    self._f.flush()

  def close(self) -> None:
    self._f.close()


def train_and_evaluate(config: TrainConfig, workdir: os.PathLike | str, *,
                       arrays: Optional[dict[str, data_lib.Arrays]] = None, progress: bool = True,
                       max_steps: Optional[int] = None) -> dict:
  """Trains (or resumes) a run in ``workdir`` and evaluates its best checkpoint on the test set.

  Args:
    config: the run's hyper-parameters.
    workdir: where checkpoints and metrics go; an existing ``last.msgpack`` there is resumed.
    arrays: ``{"train", "validation", "test"}`` splits in memory (default: loaded through tfds).
    progress: show a tqdm progress bar with throughput.
    max_steps: stop after this many steps in total (for tests and time-boxed runs; resumable).

  Returns:
    The final record: best validation accuracy and its epoch, test loss/accuracy/count, and the seconds spent
    in completed training epochs over all sessions of the run.
  """
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
    runner.check_labels(np.asarray(split.labels), classes, f"jaxsnn.training.train_and_evaluate ({name} split)")
  steps_per_epoch = data_lib.num_batches(len(arrays["train"].labels), config.batch_size, train=True)
  (workdir / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1, sort_keys=True))

  state = create_train_state(config, jax.random.key(config.seed), steps_per_epoch)
  eval_apply = ModelApply(build_model(config))
  last, best = workdir / "last.msgpack", workdir / "best.msgpack"
  epoch, start_batch = 0, 0
  if last.exists():
    restored = restore_checkpoint(last, _state_target(state, 0, 0))
    state, epoch, start_batch = restored["state"], int(restored["epoch"]), int(restored["batch"])
    print(f"resumed from {last}: epoch {epoch}, batch {start_batch}, step {int(state.step)}", flush=True)
  metrics = JsonlWriter(workdir / "metrics.jsonl")
  best_val, best_epoch, train_seconds = -1.0, -1, 0.0
  for line in (workdir / "metrics.jsonl").read_text().splitlines():  # earlier sessions of this run
    rec = json.loads(line)
    train_seconds += rec.get("epoch_seconds", 0.0)
    if "val_accuracy" in rec and rec["val_accuracy"] > best_val:
      best_val, best_epoch = rec["val_accuracy"], rec["epoch"]
  schedule = learning_rate_schedule(config, steps_per_epoch)
  bar = None
  if progress:
    from tqdm.auto import tqdm
    bar = tqdm(total=config.epochs * steps_per_epoch * config.batch_size, unit="img", unit_scale=True,
               initial=int(state.step) * config.batch_size, smoothing=0.1, dynamic_ncols=True)
  stopped = False
  try:
    while epoch < config.epochs and not stopped:
      t0 = time.time()
      sums = {"loss": 0.0, "correct": 0, "count": 0}
      pending = []
      for b, batch in enumerate(data_lib.batches(arrays["train"], config.batch_size, train=True,
                                                 mean=spec.mean, std=spec.std, seed=config.seed,
                                                 epoch=epoch, augment=augment, start=start_batch),
                                start=start_batch):
        state, out = train_step(state, batch)
        pending.append(out)
        if bar is not None:
          bar.update(config.batch_size)
        if len(pending) == 20 or b + 1 == steps_per_epoch:
          for o in jax.device_get(pending):
            sums["loss"] += o["loss"].item()
            sums["correct"] += o["correct"].item()
            sums["count"] += config.batch_size
          pending = []
          if bar is not None:
            bar.set_postfix(epoch=epoch, loss=f"{sums['loss'] / max(sums['count'], 1):.3f}",
                            acc=f"{sums['correct'] / max(sums['count'], 1):.3f}")
        done = b + 1 == steps_per_epoch
        if max_steps is not None and int(state.step) >= max_steps and not done:
          save_checkpoint(last, _state_target(state, epoch, b + 1))
          stopped = True
          break
        if config.checkpoint_every and (b + 1) % config.checkpoint_every == 0 and not done:
          save_checkpoint(last, _state_target(state, epoch, b + 1))
      if stopped:
        break
      epoch_seconds = time.time() - t0
      train_seconds += epoch_seconds
      variables = {"params": state.params, "batch_stats": state.batch_stats}
      record = {"epoch": epoch, "step": int(state.step), "lr": float(schedule(int(state.step) - 1)),
                "epoch_seconds": round(epoch_seconds, 1),
                "train_images_per_s": round((steps_per_epoch - start_batch) * config.batch_size / epoch_seconds, 1)}
      if sums["count"]:
        record.update(train_loss=sums["loss"] / sums["count"], train_accuracy=sums["correct"] / sums["count"],
                      train_count=sums["count"])
      if "validation" in arrays:
        val = evaluate(eval_apply, variables, arrays["validation"], config.batch_size, spec.mean, spec.std)
        record.update(val_loss=val["loss"], val_accuracy=val["accuracy"], val_count=val["count"])
        if val["accuracy"] > best_val:
          best_val, best_epoch = val["accuracy"], epoch
          save_checkpoint(best, variables)
      else:
        save_checkpoint(best, variables)  # no validation split: the last epoch is the result
        best_epoch = epoch
      metrics.write(record)
      if bar is not None:
        bar.write(json.dumps(record))
      epoch, start_batch = epoch + 1, 0
      save_checkpoint(last, _state_target(state, epoch, 0))
      if max_steps is not None and int(state.step) >= max_steps:
        stopped = True
  finally:
    if bar is not None:
      bar.close()
  summary = {"epochs_done": epoch, "step": int(state.step), "best_epoch": best_epoch,
             "best_val_accuracy": best_val if best_val >= 0 else None, "stopped_early": stopped,
             "train_seconds": round(train_seconds, 1)}
  if not stopped and best.exists() and "test" in arrays:
    variables = restore_checkpoint(best, {"params": state.params, "batch_stats": state.batch_stats})
    test = evaluate(eval_apply, variables, arrays["test"], config.batch_size, spec.mean, spec.std)
    summary.update(test_loss=test["loss"], test_accuracy=test["accuracy"], test_count=test["count"])
  summary["final"] = True
  metrics.write(summary)
  metrics.close()
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
    return data_lib.normalize(images, self.spec.mean, self.spec.std)


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
  name = checkpoint.stem if checkpoint.name != "best.msgpack" else pathlib.Path(run).name
  return Run(name, config, model, functools.partial(_eval_apply, model), variables, load(split["train"]),
             load(split["validation"]) if "validation" in split else None, load(split["test"]),
             data_lib.spec(config.dataset))


def _eval_apply(model, variables, x):
  return model.apply(variables, x, train=False)


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
