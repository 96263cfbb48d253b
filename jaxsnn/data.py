"""Input pipelines: tensorflow-datasets → numpy batches for JAX.

Small datasets (``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``) are loaded once into uint8 numpy arrays;
batches are then cut, augmented and normalized in numpy, deterministically from ``(seed, epoch)``. ImageNet
(``imagenet2012``, from a manual download dir) streams through ``tf.data``.

Batches are dicts ``{"image": float32 [B, H, W, C], "label": int32 [B], "mask": bool [B]}``. Training batches
drop the remainder (every step has the same shape, no recompilation); evaluation batches keep every example:
the last batch is padded to full size and its padding has ``mask == False``, so accuracy counts every image
exactly once and the step still compiles once.

The validation split is carved from the end of the training split (``val_examples`` images), never from the
test set. No function here downloads anything unless tfds is allowed to (see ``scripts/setup_offline_data.py``
for machines without internet access).

Example::

    train = load("fashion_mnist", "train[:55000]")
    for batch in batches(train, 128, train=True, seed=0, epoch=0, augment=flip_only):
      ...
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, NamedTuple, Optional

import numpy as np

from jaxsnn._src import checks
from jaxsnn._src.loop import Epochs

__all__ = ["AUGMENTATIONS", "Arrays", "Augment", "Batch", "DatasetSpec", "Epochs", "SPECS", "batches",
           "cifar_augment", "epochs", "flip_only", "imagenet_batches", "load", "normalize", "num_batches", "random_crop", "random_flip", "spec",
           "splits"]

Batch = dict
"""A batch: ``{"image": float32 [B, H, W, C], "label": int32 [B], "mask": bool [B]}`` (see the module docstring)."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Static facts about a dataset.

  Attributes:
    num_classes: label count.
    image_shape: HWC shape of one (preprocessed) image.
    mean: per-channel mean on the 0–1 scale, used for normalization.
    std: per-channel std on the 0–1 scale.
    train_examples: size of the tfds ``train`` split.
    test_split: the tfds split used as test set.
  """
  num_classes: int
  image_shape: tuple
  mean: tuple
  std: tuple
  train_examples: int
  test_split: str = "test"


SPECS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(10, (28, 28, 1), (0.1307,), (0.3081,), 60000),
    "fashion_mnist": DatasetSpec(10, (28, 28, 1), (0.2860,), (0.3530,), 60000),
    # The authors' CIFAR-10 constants.
    "cifar10": DatasetSpec(10, (32, 32, 3), (125.3 / 255, 123.0 / 255, 113.9 / 255),
                           (63.0 / 255, 62.1 / 255, 66.7 / 255), 50000),
    "cifar100": DatasetSpec(100, (32, 32, 3), (129.3 / 255, 124.1 / 255, 112.4 / 255),
                            (68.2 / 255, 65.4 / 255, 70.4 / 255), 50000),
    "imagenet2012": DatasetSpec(1000, (224, 224, 3), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1281167,
                                test_split="validation"),
}
"""The datasets jaxsnn knows, by tfds name: their :class:`DatasetSpec`."""


def spec(name: str) -> DatasetSpec:
  """Returns the ``DatasetSpec`` of a dataset name.

  Raises:
    ValueError: for an unknown name.
  """
  if name not in SPECS:
    raise ValueError(f"spec: unknown dataset {name!r}; choose one of {sorted(SPECS)}")
  return SPECS[name]


class Arrays(NamedTuple):
  """A whole split in memory: uint8 images [N, H, W, C] and int32 labels [N]."""
  images: np.ndarray
  labels: np.ndarray

  def first(self, n: Optional[int]) -> "Arrays":
    """The first ``n`` examples (all of them for None).

    Args:
      n: how many.

    Returns:
      An :class:`Arrays`.
    """
    return self if n is None else Arrays(self.images[:n], self.labels[:n])


def splits(name: str, val_examples: int) -> dict[str, str]:
  """tfds split strings for train / validation (the last ``val_examples`` training images) / test."""
  s = spec(name)
  if not 0 <= val_examples < s.train_examples:
    raise ValueError(f"splits: val_examples must be in [0, {s.train_examples}), got {val_examples}")
  cut = s.train_examples - val_examples
  out = {"train": f"train[:{cut}]" if val_examples else "train", "test": s.test_split}
  if val_examples:
    out["validation"] = f"train[{cut}:]"
  return out


def load(name: str, split: str, data_dir: Optional[str] = None, download: bool = False) -> Arrays:
  """Loads a whole tfds split of a small image dataset into numpy.

  Args:
    name: ``mnist``, ``fashion_mnist``, ``cifar10`` or ``cifar100``.
    split: a tfds split string, e.g. ``"train[:45000]"``.
    data_dir: tfds data dir (default: tfds's own, ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
    download: let tfds download and prepare the dataset if it is missing.

  Returns:
    ``Arrays`` with uint8 images [N, H, W, C] and int32 labels [N], in tfds order.
  """
  import tensorflow_datasets as tfds
  if name == "imagenet2012":
    raise ValueError("load: imagenet2012 does not fit in memory; use imagenet_batches")
  spec(name)
  ds = tfds.load(name, split=split, data_dir=data_dir, as_supervised=True, download=download)
  chunks = list(tfds.as_numpy(ds.batch(8192)))  # (not batch_size=-1: it aborts on tfds's mock data)
  if not chunks:
    raise ValueError(f"load: split {split!r} of {name} is empty")
  return Arrays(np.concatenate([c[0] for c in chunks]).astype(np.uint8),
                np.concatenate([c[1] for c in chunks]).astype(np.int32))


# --- augmentation: functions (rng, uint8 images [B, H, W, C]) -> uint8 images --------------------------------

Augment = Callable[[np.random.Generator, np.ndarray], np.ndarray]
"""An augmentation: ``(rng, uint8 images [B, H, W, C]) -> uint8 images``."""


def random_flip(rng: np.random.Generator, images: np.ndarray) -> np.ndarray:
  """Flips each image horizontally with probability 1/2."""
  flip = rng.random(images.shape[0]) < 0.5
  return np.where(flip[:, None, None, None], images[:, :, ::-1], images)


def random_crop(rng: np.random.Generator, images: np.ndarray, pad: int = 4, mode: str = "reflect") -> np.ndarray:
  """Pads each side by ``pad`` (reflect, as the authors' code) and crops back to the original size at random."""
  b, h, w, _ = images.shape
  padded = np.pad(images, [(0, 0), (pad, pad), (pad, pad), (0, 0)], mode=mode)
  dy = rng.integers(0, 2 * pad + 1, b)
  dx = rng.integers(0, 2 * pad + 1, b)
  return np.stack([padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


def cifar_augment(rng: np.random.Generator, images: np.ndarray) -> np.ndarray:
  """The authors' CIFAR augmentation: reflect-pad 4, random 32×32 crop, random horizontal flip."""
  return random_flip(rng, random_crop(rng, images, 4))


def flip_only(rng: np.random.Generator, images: np.ndarray) -> np.ndarray:
  """Random horizontal flip alone (used for Fashion-MNIST)."""
  return random_flip(rng, images)


AUGMENTATIONS: dict[str, Optional[Augment]] = {"none": None, "flip": flip_only, "cifar": cifar_augment}
"""The augmentations by the name a training config gives (``"none"``, ``"flip"``, ``"cifar"``)."""


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
  """uint8 → float32, ``(x / 255 - mean) / std`` per channel."""
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  return ((images.astype(np.float32) / 255.0) - mean) / std


def num_batches(num_examples: int, batch_size: int, train: bool) -> int:
  """Batches per epoch: ``floor`` when training (drop remainder), ``ceil`` when evaluating."""
  return num_examples // batch_size if train else -(-num_examples // batch_size)


def batches(data: Arrays, batch_size: int, *, train: bool, mean=(0.0,), std=(1.0,), seed: int = 0,
            epoch: int = 0, augment: Optional[Augment] = None, start: int = 0) -> Iterator[Batch]:
  """Yields normalized numpy batches of a split held in memory.

  Args:
    data: the split.
    batch_size: examples per batch.
    train: shuffle (permutation from ``(seed, epoch)``), augment, and drop the remainder. Otherwise keep
      the order and pad the last batch (``mask`` marks real examples).
    mean: per-channel normalization mean (0–1 scale).
    std: per-channel normalization std (0–1 scale).
    seed: base seed; each epoch's order and augmentation depend only on ``(seed, epoch)``.
    epoch: epoch index.
    augment: augmentation on uint8 batches, used only when ``train``.
    start: first batch to yield (to resume inside an epoch with the same data as an uninterrupted run).

  Yields:
    ``{"image": float32 [B, H, W, C], "label": int32 [B], "mask": bool [B]}``.
  """
  n = len(data.labels)
  batch_size = checks.positive_int(batch_size, "batch_size", "jaxsnn.data.batches")
  if train and n < batch_size:
    raise ValueError(f"batches: {n} training examples are fewer than one batch of {batch_size}")
  order = np.random.default_rng([seed, epoch]).permutation(n) if train else np.arange(n)
  for b in range(start, num_batches(n, batch_size, train)):
    idx = order[b * batch_size:(b + 1) * batch_size]
    images, labels = data.images[idx], data.labels[idx]
    if train and augment is not None:
      images = augment(np.random.default_rng([seed, epoch, b]), images)
    mask = np.ones(batch_size, bool)
    if len(idx) < batch_size:
      pad = batch_size - len(idx)
      mask[len(idx):] = False
      images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
      labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    yield {"image": normalize(images, mean, std), "label": labels.astype(np.int32), "mask": mask}


def epochs(data: Arrays, batch_size: int, *, mean=(0.0,), std=(1.0,), seed: int = 0,
           augment: Optional[Augment] = None) -> Epochs:
  """Training batches epoch after epoch, for every optimisation of jaxsnn (:func:`jaxsnn.quantize_for_conversion`,
  :func:`jaxsnn.finetune`, :func:`jaxsnn.tune_snn`, training): epoch ``e`` is ``batches(data, batch_size,
  train=True, seed=seed, epoch=e, augment=augment)``, a new shuffle and new augmentations each epoch, the same ones
  every time the job runs. A resumed loop asks for the batches it has not used yet and never makes the others.

  Args:
    data: the training split (never the test set).
    batch_size: examples per batch (the remainder of each epoch is dropped).
    mean: per-channel normalization mean (0–1 scale).
    std: per-channel normalization std (0–1 scale).
    seed: base seed of every epoch's order and augmentation.
    augment: augmentation on uint8 batches (e.g. :func:`cifar_augment`), or None.

  Returns:
    :class:`Epochs` of ``num_batches(len(data.labels), batch_size, train=True)`` batches each.

  Raises:
    ValueError: for fewer examples than one batch.

  Example::

      train = Arrays(np.zeros((300, 32, 32, 3), np.uint8), np.zeros(300, np.int32))  # e.g. load("cifar10", ...)
      stream = epochs(train, 128, mean=SPECS["cifar10"].mean, std=SPECS["cifar10"].std, augment=cifar_augment)
      assert stream.iterations_per_epoch == 2  # 300 // 128, the remainder dropped
      first = next(iter(stream.of_epoch(0, 0)))  # epoch 0's first batch: {"image", "label", "mask"}
      # jaxsnn.quantize_for_conversion(apply_fn, variables, stream, levels=4, iterations=3000, ...)
  """
  n = len(data.labels)
  batch_size = checks.positive_int(batch_size, "batch_size", "jaxsnn.data.epochs")
  if n < batch_size:
    raise ValueError(f"jaxsnn.data.epochs: {n} training examples are fewer than one batch of {batch_size}")

  def of_epoch(epoch: int, start: int):
    return batches(data, batch_size, train=True, mean=mean, std=std, seed=seed, epoch=epoch, augment=augment,
                   start=start)

  return Epochs(of_epoch, num_batches(n, batch_size, train=True))


# --- ImageNet: streaming through tf.data ---------------------------------------------------------------------


def imagenet_batches(split: str, batch_size: int, *, train: bool, data_dir: Optional[str] = None,
                     manual_dir: Optional[str] = None, seed: int = 0, image_size: int = 224,
                     download: bool = True) -> Iterator[Batch]:
  """Streams ``imagenet2012`` as numpy batches (one pass over ``split``).

  ImageNet cannot be downloaded by tfds: put ``ILSVRC2012_img_train.tar`` and ``ILSVRC2012_img_val.tar`` in
  ``manual_dir`` (default ``<data_dir>/downloads/manual``); the first call prepares the dataset.

  Training: random-resized crop (8–100 % area, aspect 3/4–4/3) and horizontal flip, shuffled from ``seed``,
  remainder dropped. Evaluation: resize the short side to ``image_size / 0.875`` and center crop, the last
  batch padded with ``mask == False``.
  """
  import tensorflow as tf
  import tensorflow_datasets as tfds
  s = spec("imagenet2012")
  config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  ds = tfds.load("imagenet2012", split=split, data_dir=data_dir, as_supervised=True, download=download,
                 download_and_prepare_kwargs={"download_config": config},
                 read_config=tfds.ReadConfig(shuffle_seed=seed), shuffle_files=train)
  mean = tf.constant(s.mean, tf.float32) * 255.0
  std = tf.constant(s.std, tf.float32) * 255.0

  def train_map(index, example):
    image, label = example
    # Stateless randomness from (seed, example index): the same augmentation for a given seed.
    index = tf.cast(index, tf.int32)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([0, 0, 4], tf.float32), seed=tf.stack([seed, 2 * index]),
        area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3), use_image_if_no_bounding_boxes=True)
    image = tf.image.resize(tf.slice(image, begin, size), (image_size, image_size))
    image = tf.image.stateless_random_flip_left_right(image, seed=tf.stack([seed, 2 * index + 1]))
    return image, label

  def eval_map(image, label):
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = (image_size / 0.875) / tf.reduce_min(shape)
    image = tf.image.resize(image, tf.cast(tf.round(shape * scale), tf.int32))
    image = tf.image.resize_with_crop_or_pad(image, image_size, image_size)
    return image, label

  def finish(image, label):
    return {"image": (tf.cast(image, tf.float32) - mean) / std, "label": tf.cast(label, tf.int32),
            "mask": tf.ones([], tf.bool)}

  if train:
    ds = ds.enumerate().shuffle(16 * batch_size, seed=seed).map(train_map, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(finish).batch(batch_size, drop_remainder=True)
  else:
    ds = ds.map(eval_map, num_parallel_calls=tf.data.AUTOTUNE).map(finish).batch(batch_size)
  for batch in tfds.as_numpy(ds.prefetch(tf.data.AUTOTUNE)):
    b = len(batch["label"])
    if b < batch_size:
      batch = {k: np.concatenate([v, np.zeros((batch_size - b,) + v.shape[1:], v.dtype)]) for k, v in
               batch.items()}
    yield batch
