"""Tests for jaxsnn.training: schedules, optimizer, checkpoints, resumable runs, configs on mock data."""

import dataclasses
import functools
import importlib
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsnn import data, training
from jaxsnn._src import files
from conftest import count_compiles

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # experiments/ is not part of the package


def tiny_config(**kwargs):
  base = dict(dataset="fashion_mnist", model="small_cnn", model_kwargs={"width": 0.125}, batch_size=16,
              epochs=3, schedule="onecycle", learning_rate=0.05, val_examples=40, augment="flip",
              checkpoint_every=2, seed=0)
  base.update(kwargs)
  return training.TrainConfig(**base)


def tiny_arrays(seed=0):
  """A learnable 28×28 task: the class sets the brightness of one of ten horizontal bands."""
  rng = np.random.default_rng(seed)

  def make(n):
    labels = rng.integers(0, 10, n).astype(np.int32)
    images = rng.integers(0, 60, (n, 28, 28, 1)).astype(np.uint8)
    for i, c in enumerate(labels):
      images[i, 2 + 2 * c:4 + 2 * c] += 190
    return data.Arrays(images, labels)

  return {"train": make(160), "validation": make(40), "test": make(37)}


def test_step_schedule_is_the_papers():
  config = training.TrainConfig(learning_rate=0.01, epochs=200, schedule="step")
  lr = training.learning_rate_schedule(config, iterations_per_epoch=10)
  np.testing.assert_allclose([lr(0), lr(599), lr(600), lr(1199), lr(1200), lr(1600), lr(1999)],
                             [0.01, 0.01, 0.002, 0.002, 0.0004, 0.00008, 0.00008], rtol=1e-5)


def test_onecycle_and_cosine_schedules():
  lr = training.learning_rate_schedule(training.TrainConfig(learning_rate=0.1, epochs=4, schedule="onecycle"), 25)
  values = np.array([lr(s) for s in range(100)])
  assert values.argmax() == 25 and np.isclose(values.max(), 0.1, rtol=1e-3)
  assert values[0] < 0.01 and values[-1] < 1e-3
  lr = training.learning_rate_schedule(
      training.TrainConfig(learning_rate=0.2, epochs=5, schedule="cosine", warmup_epochs=1), 10)
  assert np.isclose(lr(10), 0.2) and lr(5) < 0.2 and lr(50) < 1e-6
  with pytest.raises(ValueError, match="unknown schedule 'linear'"):
    training.learning_rate_schedule(training.TrainConfig(schedule="linear"), 10)


def test_optimizer_applies_coupled_weight_decay_and_momentum():
  config = training.TrainConfig(learning_rate=0.1, schedule="step", weight_decay=5e-4, momentum=0.9)
  tx = training.make_optimizer(config, 10)
  params = {"w": jnp.array([2.0, -4.0])}
  grads = {"w": jnp.array([1.0, 0.0])}
  state = tx.init(params)
  u1, state = tx.update(grads, state, params)
  np.testing.assert_allclose(u1["w"], -0.1 * (grads["w"] + 5e-4 * params["w"]), rtol=1e-6)
  u2, _ = tx.update(grads, state, params)
  np.testing.assert_allclose(u2["w"], -0.1 * 1.9 * (grads["w"] + 5e-4 * params["w"]), rtol=1e-6)


def test_variables_files_are_written_atomically_and_read_back(tmp_path):
  variables = {"params": {"w": np.arange(5.0, dtype=np.float32)}, "batch_stats": {"mean": np.float32([3.0])}}
  path = tmp_path / "run" / "best.jaxsnn"
  training.save_variables(path, variables)
  (path.parent / ".best.jaxsnn.999.tmp").write_bytes(b"half-written garbage")  # a killed writer's leftover
  assert_trees_equal(training.load_variables(path), variables)
  training.save_variables(path, {"params": {"w": np.ones(2, np.float32)}})
  assert training.load_variables(path)["params"]["w"].tolist() == [1.0, 1.0]
  assert sorted(p.name for p in path.parent.iterdir() if not p.name.startswith(".best.jaxsnn.999")) == [
      "best.jaxsnn"]
  assert files.info(path)["kind"] == "variables"
  with pytest.raises(files.FormatError, match="holds a trained network's variables, not the checkpoint"):
    files.read(path, "checkpoint", caller="t")


def test_a_legacy_msgpack_and_a_jaxsnn_file_give_the_same_bits(tmp_path):
  """The committed networks are flax msgpack files (read only): they read as they always did, and the same variables
  written in jaxsnn's format read back with the same structure, dtypes and bits."""
  from flax import serialization
  committed = ROOT / "experiments/checkpoints/fashion_mnist_small_cnn.msgpack"
  variables = training.load_variables(committed)
  assert_trees_equal(variables, serialization.msgpack_restore(committed.read_bytes()))
  training.save_variables(tmp_path / "v.jaxsnn", variables)
  assert_trees_equal(training.load_variables(tmp_path / "v.jaxsnn"), variables)
  assert training.checkpoint_files(committed)[1] == committed
  for name in ("fashion_mnist_small_cnn.config.json", "fashion_mnist_small_cnn.metrics.jsonl"):
    (tmp_path / name).write_bytes(committed.with_name(name).read_bytes())
  (tmp_path / "fashion_mnist_small_cnn.jaxsnn").write_bytes((tmp_path / "v.jaxsnn").read_bytes())
  assert training.checkpoint_files(tmp_path / "fashion_mnist_small_cnn")[1].suffix == ".jaxsnn"
  assert_trees_equal(training.load_trained(tmp_path / "fashion_mnist_small_cnn")[2], variables)


def test_a_variables_write_that_fails_midway_leaves_the_old_one_intact(tmp_path, monkeypatch):
  path = tmp_path / "best.jaxsnn"
  training.save_variables(path, {"a": np.arange(5.0)})
  before = path.read_bytes()
  real_open = open

  class Failing:  # writes the first bytes, then the disk is full
    def __init__(self, f):
      self.f = f

    def write(self, data):
      self.f.write(data[:7])
      raise OSError(28, "No space left on device")

    def __getattr__(self, name):
      return getattr(self.f, name)

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      return self.f.__exit__(*exc)

  monkeypatch.setattr("builtins.open", lambda *a, **k: Failing(real_open(*a, **k)))
  with pytest.raises(OSError, match="No space left"):
    training.save_variables(path, {"a": np.ones(1000)})
  monkeypatch.undo()
  assert path.read_bytes() == before  # the old file survives, byte for byte
  assert [p.name for p in tmp_path.iterdir()] == ["best.jaxsnn"]  # and no temporary file is left behind


def assert_trees_equal(a, b):
  """Same structure, and every leaf with the same dtype, shape and bits."""
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(x, y)


def _records(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_train_and_evaluate_learns_and_counts_every_test_image(tmp_path):
  arrays = tiny_arrays()
  summary = training.train_and_evaluate(tiny_config(), tmp_path, arrays=arrays, progress=False)
  records = _records(tmp_path)
  epochs = [r for r in records if "val_accuracy" in r]
  assert [r["epoch"] for r in epochs] == [0, 1, 2]
  assert all(r["val_count"] == 40 and r["train_count"] == 160 for r in epochs)
  assert summary["test_count"] == 37  # 37 = 2 full batches of 16 + 5, nothing dropped
  assert summary["train_seconds"] > 0
  assert summary["test_accuracy"] > 0.5, summary  # chance is 0.1
  best = max(epochs, key=lambda r: r["val_accuracy"])
  assert summary["best_epoch"] == best["epoch"] and summary["best_val_accuracy"] == best["val_accuracy"]
  # The best checkpoint holds plain variables that the eval-mode model applies.
  variables = training.load_variables(tmp_path / "best.jaxsnn")
  model = training.build_model(tiny_config())
  x = data.normalize(arrays["test"].images, data.spec("fashion_mnist").mean, data.spec("fashion_mnist").std)
  acc = float(jnp.mean(jnp.argmax(model.apply(variables, x, train=False), -1) == arrays["test"].labels))
  assert acc == pytest.approx(summary["test_accuracy"])
  assert json.loads((tmp_path / "config.json").read_text())["model"] == "small_cnn"


def _same_run(a, b):
  """Two work dirs hold the same bits: best variables, the loop's checkpoint, and every metric but the timings."""
  assert_trees_equal(training.load_variables(a / "best.jaxsnn"), training.load_variables(b / "best.jaxsnn"))
  assert_trees_equal(files.read(a / "last.jaxsnn", "checkpoint", caller="t"),
                     files.read(b / "last.jaxsnn", "checkpoint", caller="t"))
  timings = ("epoch_seconds", "train_images_per_s", "train_seconds")
  untimed = lambda d: [{k: v for k, v in r.items() if k not in timings} for r in _records(d)]  # noqa: E731
  assert [r for r in untimed(a) if "final" not in r] == [r for r in untimed(b) if "final" not in r]
  assert untimed(a)[-1] == untimed(b)[-1]


def test_max_steps_stops_a_run_that_then_resumes_to_the_same_bits(tmp_path):
  arrays = tiny_arrays()
  config = tiny_config(epochs=2)
  straight = training.train_and_evaluate(config, tmp_path / "straight", arrays=arrays, progress=False)
  # Stop mid-epoch (after step 3 of 10 per epoch), then again after the first epoch, then finish.
  first = training.train_and_evaluate(config, tmp_path / "resumed", arrays=arrays, progress=False, max_iterations=3)
  assert first["stopped_early"] and first["step"] == 3 and "test_accuracy" not in first
  training.train_and_evaluate(config, tmp_path / "resumed", arrays=arrays, progress=False, max_iterations=10)
  resumed = training.train_and_evaluate(config, tmp_path / "resumed", arrays=arrays, progress=False)
  assert resumed["step"] == straight["step"] == 20 and len([r for r in _records(tmp_path / "resumed")
                                                            if "final" in r]) == 3
  # The same program on the same shapes and the same batches: the same bits, not merely close numbers.
  _same_run(tmp_path / "resumed", tmp_path / "straight")
  with pytest.raises(ValueError, match="belongs to another job \\(another config or other data\\)"):
    training.train_and_evaluate(tiny_config(epochs=2, learning_rate=0.01), tmp_path / "resumed", arrays=arrays,
                                progress=False)


def test_a_killed_run_resumes_bit_for_bit_and_compiles_nothing_again(tmp_path, monkeypatch):
  """Killed where it hurts most: after the first epoch's metrics line and best variables are written, before its
  checkpoint (the last one is from step 8 of 10). The resumed session redoes steps 9 and 10, writes that line once,
  and ends with the bits of an uninterrupted run; neither a second run nor the resume compiles anything."""
  from jaxsnn._src import loop
  arrays = tiny_arrays()
  config = tiny_config(epochs=2)
  straight = training.train_and_evaluate(config, tmp_path / "straight", arrays=arrays, progress=False)
  save = loop.save_checkpoint

  def killed_at_the_first_epochs_end(path, job, tree):
    if tree["step"] == 10:
      raise KeyboardInterrupt
    save(path, job, tree)

  monkeypatch.setattr(loop, "save_checkpoint", killed_at_the_first_epochs_end)
  with count_compiles() as compiles:
    with pytest.raises(KeyboardInterrupt):
      training.train_and_evaluate(config, tmp_path / "resumed", arrays=arrays, progress=False)
    assert [r["epoch"] for r in _records(tmp_path / "resumed")] == [0]
    assert files.read(tmp_path / "resumed" / "last.jaxsnn", "checkpoint", caller="t")["state"]["step"] == 8
    monkeypatch.undo()
    resumed = training.train_and_evaluate(config, tmp_path / "resumed", arrays=arrays, progress=False)
  assert compiles == []
  assert [r.get("epoch") for r in _records(tmp_path / "resumed")] == [0, 1, None]
  assert {k: v for k, v in resumed.items() if k != "train_seconds"} == {
      k: v for k, v in straight.items() if k != "train_seconds"}
  _same_run(tmp_path / "resumed", tmp_path / "straight")


def test_unknown_augment_is_rejected(tmp_path):
  with pytest.raises(ValueError, match="unknown augment 'mixup'"):
    training.train_and_evaluate(tiny_config(augment="mixup"), tmp_path, arrays=tiny_arrays(), progress=False)


CONFIGS = ["fashion_mnist_small_cnn", "cifar10_resnet20", "cifar10_vgg16_w025", "cifar10_vgg16",
           "cifar10_resnet18", "cifar100_vgg16", "cifar100_resnet18"]


def mock_splits(config, tfds):
  """The config's splits loaded through tfds (data.splits + data.load, as train_and_evaluate does), on mock data."""
  with tfds.testing.mock_data(num_examples=8):
    return {k: data.load(config.dataset, split, config.data_dir)
            for k, split in data.splits(config.dataset, config.val_examples).items()}


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_its_data_and_traces_its_training_step_at_full_size(name):
  """Every experiment config as committed (full-size paper models included): its splits load through tfds, a batch
  gets the config's augmentation, and the model, the optimizer with its schedule and one training step trace at full
  size with the dataset's classes (jax.eval_shape: every shape and dtype checked, nothing compiled)."""
  tfds = pytest.importorskip("tensorflow_datasets")
  config = importlib.import_module(f"experiments.configs.{name}").get_config()
  assert config.momentum == 0.9 and config.weight_decay == 5e-4 and config.val_examples > 0
  spec = data.spec(config.dataset)
  arrays = mock_splits(config, tfds)
  assert set(arrays) == {"train", "validation", "test"}
  batch = next(data.batches(arrays["train"], 4, train=True, mean=spec.mean, std=spec.std, seed=config.seed,
                            augment=data.AUGMENTATIONS[config.augment]))
  assert batch["image"].shape == (4,) + tuple(spec.image_shape)
  state = jax.eval_shape(lambda: training.create_train_state(config, jax.random.key(config.seed), 10))
  new_state, out = jax.eval_shape(training.train_step, state, batch)
  assert jax.tree.structure(new_state.params) == jax.tree.structure(state.params)
  assert [x.shape for x in jax.tree.leaves(new_state)] == [x.shape for x in jax.tree.leaves(state)]
  assert out["loss"].shape == () and out["correct"].shape == ()
  logits = jax.eval_shape(functools.partial(training.build_model(config).apply, train=False),
                          {"params": state.params, "batch_stats": state.batch_stats}, batch["image"])
  assert logits.shape == (4, spec.num_classes)
  assert training.learning_rate_schedule(config, 10)(0) > 0


def test_the_small_config_trains_through_tfds():
  """The committed CPU reference config, for real on mock data (its fast_conv gradient too): the loss of a fixed
  batch falls within a few steps, and train_and_evaluate reads its data through tfds."""
  tfds = pytest.importorskip("tensorflow_datasets")
  config = importlib.import_module("experiments.configs.fashion_mnist_small_cnn").get_config()
  assert config.fast_conv
  spec = data.spec(config.dataset)
  arrays = mock_splits(config, tfds)
  batch = next(data.batches(arrays["train"], 8, train=True, mean=spec.mean, std=spec.std))
  state = training.create_train_state(config, jax.random.key(0), iterations_per_epoch=10)  # the rate rises over 30 steps
  losses = []
  for _ in range(6):
    state, out = training.train_step(state, batch)
    losses.append(float(out["loss"]) / 8)  # the batch's mean loss before the step
  assert np.all(np.diff(losses) < 0) and losses[-1] < 0.5 * losses[0], losses


def test_train_and_evaluate_reads_the_configs_data_through_tfds(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  config = dataclasses.replace(importlib.import_module("experiments.configs.fashion_mnist_small_cnn").get_config(),
                               batch_size=4)
  with tfds.testing.mock_data(num_examples=8):
    summary = training.train_and_evaluate(config, tmp_path, progress=False, max_iterations=1)
  assert summary["step"] == 1 and summary["stopped_early"]
  assert files.read(tmp_path / "last.jaxsnn", "checkpoint", caller="t")["state"]["step"] == 1


COMMITTED = sorted((ROOT / "experiments/checkpoints").glob("*.msgpack"))


@pytest.mark.parametrize("path", COMMITTED, ids=[p.stem for p in COMMITTED])
def test_committed_checkpoint_matches_its_model(path):
  """Every committed reference checkpoint loads into the model its config builds, and gives sane logits."""
  config = training.TrainConfig(**json.loads(path.with_suffix(".config.json").read_text()))
  model = training.build_model(config)
  shape = (2,) + tuple(data.spec(config.dataset).image_shape)
  expected = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
  variables = training.load_variables(path)
  assert jax.tree.structure(variables) == jax.tree.structure(expected)
  for got, want in zip(jax.tree.leaves(variables), jax.tree.leaves(expected)):
    assert got.shape == want.shape and got.dtype == want.dtype
  logits = model.apply(variables, jax.random.normal(jax.random.key(1), shape), train=False)
  assert logits.shape == (2, data.spec(config.dataset).num_classes)
  assert np.all(np.isfinite(logits)) and np.ptp(np.asarray(logits)) > 0


def test_committed_checkpoints_and_run_dirs_load_through_the_library(tmp_path):
  common = importlib.import_module("experiments.common")
  assert common.DEFAULT_RUN.with_suffix(".msgpack").is_file()  # the default works on a fresh clone
  assert common.resolve_run("cifar10_resnet20") == ROOT / "experiments/checkpoints/cifar10_resnet20"
  for arg in (common.DEFAULT_RUN, common.DEFAULT_RUN.with_suffix(".msgpack")):
    config, checkpoint, metrics = training.checkpoint_files(arg)
    stem = "fashion_mnist_small_cnn"
    assert (config.name, checkpoint.name, metrics.name) == (
        f"{stem}.config.json", f"{stem}.msgpack", f"{stem}.metrics.jsonl")
  config, model, variables = training.load_trained(common.DEFAULT_RUN)
  assert config.model == "small_cnn" and set(variables) == {"params", "batch_stats"}
  assert training.load_config(ROOT / "experiments/configs/fashion_mnist_small_cnn.py") == config
  assert common.best_epoch(common.DEFAULT_RUN)["val_accuracy"] > 0.9
  for name in ("config.json", "best.msgpack", "metrics.jsonl"):
    (tmp_path / name).write_text("")
  assert training.checkpoint_files(tmp_path)[1] == tmp_path / "best.msgpack"
  (tmp_path / "metrics.jsonl").unlink()
  with pytest.raises(FileNotFoundError, match=r"missing .*metrics\.jsonl\. Pass a run directory"):
    training.checkpoint_files(tmp_path)
  with pytest.raises(FileNotFoundError, match=r"missing .*nope\.config\.json"):
    training.checkpoint_files(tmp_path / "nope")
  with pytest.raises(ValueError, match="neither a config file"):
    training.load_config(tmp_path / "best.msgpack")


@pytest.mark.parametrize("name,base,levels", [("cifar10_resnet20_qcfs", "cifar10_resnet20", 4),
                                              ("cifar10_resnet20_qcfs8", "cifar10_resnet20", 8),
                                              ("cifar10_vgg16_w025_qcfs", "cifar10_vgg16_w025", 4),
                                              ("cifar10_vgg16_w025_qcfs8", "cifar10_vgg16_w025", 8)])
def test_qcfs_configs_change_only_the_activation(name, base, levels):
  """A QCFS config is its ReLU reference recipe with QCFS levels set: same data, schedule, model and seed."""
  config = importlib.import_module(f"experiments.configs.{name}").get_config()
  reference = importlib.import_module(f"experiments.configs.{base}").get_config()
  assert reference.qcfs_levels is None and config.qcfs_levels == levels
  assert dataclasses.replace(config, qcfs_levels=None, qcfs_init_threshold=reference.qcfs_init_threshold) == reference
  act = training.build_model(config).act
  assert (act.levels, act.init_threshold) == (levels, 8.0)
