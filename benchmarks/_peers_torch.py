"""The PyTorch / SpikingJelly half of ``benchmarks/peers.py``, run by the peers venv's python (never by jaxsnn's).

    benchmarks/.venv-peers/bin/python benchmarks/_peers_torch.py JOB.json OUT.json

``peers.py`` writes the job: the network's architecture (``arch``), a ``.npz`` of the Flax variables (keys
``params/Conv_0/kernel``, ``batch_stats/BatchNorm_0/mean``, ...), a ``.npz`` of normalized NHWC float32 images
(calibration images from the training split, test / validation images and labels, and the Flax logits of the first
test images), and a list of tasks:

- ``ann``: the torch ANN's logits against the Flax logits (max abs difference), its accuracy on each split, and the
  time of one ANN pass at the benchmark batch size;
- ``curves``: for each SpikingJelly recipe, convert, simulate every batch of a split for ``max_T`` steps and record
  the accuracy after every t = 1..max_T (the readout summed over steps 1..t, so one run gives every T);
- ``speed``: for each recipe, images*steps/s of a batch over ``T`` steps (warm-up first, then the median of repeats).

The result is one JSON object written to OUT.json. This process needs torch and spikingjelly only (no jax).
"""
import copy
import itertools
import json
import logging
import os
import pathlib
import platform
import statistics
import sys
import time
import warnings

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")  # SpikingJelly's calibration loops show tqdm bars; read at tqdm's import
try:
  import torch
  import torch.nn as nn
  from spikingjelly.activation_based import ann2snn, functional
except ImportError as e:  # peers.py checks first; this is for a direct call
  sys.exit(f"_peers_torch.py: {e}. Install the peers venv with: bash benchmarks/setup_peers.sh")

# --- the Flax models as torch modules -----------------------------------------------------------------------------


class TorchVGG(nn.Module):
  """``jaxsnn.models.VGG`` in torch: [conv-BN-ReLU | AvgPool 2x2]*, flatten, [Linear-ReLU]*, Linear."""

  def __init__(self, arch: dict):
    super().__init__()
    layers, c_in, hw = [], arch["in_channels"], arch["input_hw"]
    for spec in arch["layers"]:
      if spec == "P":
        layers.append(nn.AvgPool2d(2, 2))
        hw //= 2
        continue
      c, k = spec
      layers += [nn.Conv2d(c_in, c, k, padding=(k - 1) // 2), nn.BatchNorm2d(c, eps=arch["bn_eps"]), nn.ReLU()]
      c_in = c
    self.features = nn.Sequential(*layers)
    self.flatten = nn.Flatten(1)
    self.flat_chw = (c_in, hw, hw)
    head, f_in = [], c_in * hw * hw
    for f in arch["head"]:
      head += [nn.Linear(f_in, f), nn.ReLU()]
      f_in = f
    head.append(nn.Linear(f_in, arch["num_classes"]))
    self.classifier = nn.Sequential(*head)

  def forward(self, x):
    return self.classifier(self.flatten(self.features(x)))

  def load_flax(self, w: dict) -> None:
    convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
    bns = [m for m in self.features if isinstance(m, nn.BatchNorm2d)]
    for i, (conv, bn) in enumerate(zip(convs, bns)):
      _set_conv(conv, w, f"Conv_{i}")
      _set_bn(bn, w, f"BatchNorm_{i}")
    for i, lin in enumerate(m for m in self.classifier if isinstance(m, nn.Linear)):
      kernel = w[f"params/Dense_{i}/kernel"]
      if i == 0:  # Flax flattens NHWC, (h, w, c) order; torch flattens NCHW, (c, h, w) order
        c, h, ww = self.flat_chw
        kernel = kernel.reshape(h, ww, c, -1).transpose(2, 0, 1, 3).reshape(c * h * ww, -1)
      _copy(lin.weight, kernel.T)
      _copy(lin.bias, w[f"params/Dense_{i}/bias"])


class TorchBasicBlock(nn.Module):
  """``jaxsnn.models.BasicBlock``: conv-BN-ReLU-conv-BN + shortcut (identity or 1x1 conv + BN), then ReLU."""

  def __init__(self, c_in: int, c: int, stride: int, eps: float):
    super().__init__()
    self.conv1 = nn.Conv2d(c_in, c, 3, stride, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(c, eps=eps)
    self.relu1 = nn.ReLU()
    self.conv2 = nn.Conv2d(c, c, 3, 1, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(c, eps=eps)
    self.project = stride != 1 or c_in != c
    if self.project:
      self.shortcut = nn.Sequential(nn.Conv2d(c_in, c, 1, stride, bias=False), nn.BatchNorm2d(c, eps=eps))
    else:
      self.shortcut = nn.Identity()
    self.relu2 = nn.ReLU()

  def forward(self, x):
    y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
    return self.relu2(self.shortcut(x) + y)

  def load_flax(self, w: dict, prefix: str) -> None:
    _set_conv(self.conv1, w, f"{prefix}/Conv_0")
    _set_bn(self.bn1, w, f"{prefix}/BatchNorm_0")
    _set_conv(self.conv2, w, f"{prefix}/Conv_1")
    _set_bn(self.bn2, w, f"{prefix}/BatchNorm_1")
    if self.project:
      _set_conv(self.shortcut[0], w, f"{prefix}/Conv_2")
      _set_bn(self.shortcut[1], w, f"{prefix}/BatchNorm_2")


class TorchResNet(nn.Module):
  """``jaxsnn.models.ResNet``: CIFAR stem (3x3 conv, BN, ReLU), basic-block stages, global average pool, Linear."""

  def __init__(self, arch: dict):
    super().__init__()
    eps = arch["bn_eps"]
    self.conv = nn.Conv2d(arch["in_channels"], arch["stem"], 3, padding=1, bias=False)
    self.bn = nn.BatchNorm2d(arch["stem"], eps=eps)
    self.relu = nn.ReLU()
    blocks, c_in = [], arch["stem"]
    for i, (n, c) in enumerate(arch["stages"]):
      for j in range(n):
        blocks.append(TorchBasicBlock(c_in, c, 2 if i > 0 and j == 0 else 1, eps))
        c_in = c
    self.blocks = nn.Sequential(*blocks)
    self.pool = nn.AdaptiveAvgPool2d((1, 1))
    self.flatten = nn.Flatten(1)
    self.fc = nn.Linear(c_in, arch["num_classes"])

  def forward(self, x):
    return self.fc(self.flatten(self.pool(self.blocks(self.relu(self.bn(self.conv(x)))))))

  def load_flax(self, w: dict) -> None:
    _set_conv(self.conv, w, "Conv_0")
    _set_bn(self.bn, w, "BatchNorm_0")
    for i, block in enumerate(self.blocks):
      block.load_flax(w, f"BasicBlock_{i}")
    _copy(self.fc.weight, w["params/Dense_0/kernel"].T)
    _copy(self.fc.bias, w["params/Dense_0/bias"])


def _copy(param: torch.Tensor, value: np.ndarray) -> None:
  value = torch.from_numpy(np.ascontiguousarray(value, np.float32))
  if tuple(param.shape) != tuple(value.shape):
    raise ValueError(f"_peers_torch: shape mismatch {tuple(param.shape)} vs Flax {tuple(value.shape)}")
  with torch.no_grad():
    param.copy_(value)


def _set_conv(conv: nn.Conv2d, w: dict, name: str) -> None:
  _copy(conv.weight, w[f"params/{name}/kernel"].transpose(3, 2, 0, 1))  # HWIO -> OIHW
  if conv.bias is not None:
    _copy(conv.bias, w[f"params/{name}/bias"])


def _set_bn(bn: nn.BatchNorm2d, w: dict, name: str) -> None:
  _copy(bn.weight, w[f"params/{name}/scale"])
  _copy(bn.bias, w[f"params/{name}/bias"])
  _copy(bn.running_mean, w[f"batch_stats/{name}/mean"])
  _copy(bn.running_var, w[f"batch_stats/{name}/var"])


def build_ann(arch: dict, weights: dict) -> nn.Module:
  """The torch twin of a jaxsnn VGG / ResNet with the Flax variables (flattened ``params/...``, ``batch_stats/...``)."""
  net = {"vgg": TorchVGG, "resnet": TorchResNet}[arch["kind"]](arch)
  net.load_flax(weights)
  expected = sum(1 for _ in net.parameters()) + sum(1 for n, _ in net.named_buffers() if "running" in n)
  if expected != len(weights):  # every Flax tensor found a place
    raise ValueError(f"_peers_torch: the torch {arch['kind']} has {expected} tensors, the Flax variables "
                     f"{len(weights)}: the architectures differ")
  return net.eval()


# --- SpikingJelly recipes -----------------------------------------------------------------------------------------
# name -> (recipe factory(calibration batches), delayed readout variant too). "robust" is the recipe of SpikingJelly's
# own ImageNet example (examples/imagenet_resnet18_ltb.py): channel-wise 99.9th percentile thresholds and neurons
# starting at half threshold; "ltb" is its Local Threshold Balancing recipe (Bu et al., CVPR 2025).
#
# LTB raises each channel's threshold by 2 * mean(overflow) per calibration batch, starting from 0, so it needs
# many batches: measured on ResNet-20 (128 test images, T = 64), 40 batches give 46 %, 160 batches 91 %, 400
# batches 93 %. Its ImageNet example calibrates on 50,000 images at batch 128 (391 batches); here the calibration
# images are cycled to at least as many batches (the same images, several passes).
LTB_MIN_BATCHES = 391


def _cycle(batches: list, n: int) -> list:
  return list(itertools.islice(itertools.cycle(batches), max(n, len(batches))))


SJ_RECIPES = {
    "max": (lambda calib: ann2snn.RateCodingRecipe(dataloader=calib, mode="Max"), False),
    "p99.9": (lambda calib: ann2snn.RateCodingRecipe(dataloader=calib, mode="99.9%"), False),
    "robust": (lambda calib: ann2snn.RateCodingRecipe(dataloader=calib, mode="99.9%", channel_wise=True,
                                                      half_threshold=True), True),
    "ltb": (lambda calib: ann2snn.LocalThresholdBalancingRecipe(dataloader=_cycle(calib, LTB_MIN_BATCHES)), True),
}
_CONVERTED: dict = {}


def convert(ann: nn.Module, recipe: str, calib: list) -> nn.Module:
  """SpikingJelly's converter with one recipe (cached: a process converts each recipe once)."""
  if recipe not in _CONVERTED:
    factory, _ = SJ_RECIPES[recipe]
    t0 = time.perf_counter()
    snn = ann2snn.Converter(recipe=factory(calib), device="cpu").convert(copy.deepcopy(ann)).eval()
    _CONVERTED[recipe] = (snn, time.perf_counter() - t0)
  return _CONVERTED[recipe][0]


def delay_start(snn: nn.Module, calib: list) -> int:
  """SpikingJelly's estimate of the delayed-readout start (the raw delay, before its clamp to a given T)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    return int(ann2snn.estimate_delay_start(snn, calib, "cpu", time_steps=10**9))


def delayed_starts(raw: int, max_T: int) -> np.ndarray:
  """The readout start SpikingJelly's ``estimate_delay_start`` returns for each T = 1..max_T (its clamp rule)."""
  T = np.arange(1, max_T + 1)
  return np.where(T < raw + 4, np.maximum(T - 5, 0), np.minimum(raw, T - 1))


def _save_progress(path: pathlib.Path, **arrays) -> None:
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "wb") as f:
    np.savez(f, **arrays)
  os.replace(tmp, path)


def curves(snn: nn.Module, x: np.ndarray, y: np.ndarray, batch: int, max_T: int, classes: int,
           starts: np.ndarray | None, label: str, progress: pathlib.Path | None = None,
           fingerprint: str = "") -> dict:
  """Accuracy after every T = 1..max_T (summed readout), and with a delayed readout when ``starts`` is given.

  With ``progress`` (a file path) the counts are written there atomically after every batch and a run that finds the
  file resumes after the batches it covers (its ``fingerprint`` must equal this job's; else it is refused).
  """
  correct = np.zeros(max_T, np.int64)
  correct_delayed = np.zeros(max_T, np.int64)
  begin = 0
  if progress is not None and progress.exists():
    with np.load(progress) as f:
      if str(f["fingerprint"]) != fingerprint or int(f["max_T"]) != max_T or int(f["batch"]) != batch:
        raise ValueError(f"_peers_torch: the checkpoint {progress} belongs to another job (other weights, data, T or "
                         "batch); delete it to start that curve over.")
      begin, correct, correct_delayed = int(f["done"]), f["correct"], f["correct_delayed"]
    print(f"  {label}: resuming after {begin} images", file=sys.stderr, flush=True)
  t0 = time.perf_counter()
  with torch.no_grad():
    for i in range(begin, len(x), batch):
      xb, yb = to_nchw(x[i:i + batch]), y[i:i + batch]
      functional.reset_net(snn)
      cum = torch.zeros((max_T + 1, xb.shape[0], classes), dtype=torch.float64)  # cum[t]: sum of steps 1..t
      for t in range(max_T):
        cum[t + 1] = cum[t] + snn(xb)
      c = cum.numpy()
      correct += (c[1:].argmax(-1) == yb[None]).sum(1)
      if starts is not None:  # the readout of T steps from step starts[T - 1] on: cum[T] - cum[start]
        correct_delayed += ((c[1:] - c[starts]).argmax(-1) == yb[None]).sum(1)
      done = min(i + batch, len(x))
      if progress is not None:
        _save_progress(progress, fingerprint=np.asarray(fingerprint), max_T=max_T, batch=batch, done=done,
                       correct=correct, correct_delayed=correct_delayed)
      print(f"  {label}: {done}/{len(x)} images, acc@T={max_T} {correct[-1] / done:.4f}, "
            f"{(done - begin) * max_T / (time.perf_counter() - t0):,.0f} img*steps/s", file=sys.stderr, flush=True)
  out = {"accuracy": (correct / len(x)).tolist()}
  if starts is not None:
    out["accuracy_delayed"] = (correct_delayed / len(x)).tolist()
  return out


def to_nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2), np.float32))


def timed(fn, repeats: int) -> float:
  fn()  # warm up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def snn_steps(snn: nn.Module, xb: torch.Tensor, T: int) -> torch.Tensor:
  functional.reset_net(snn)
  out = snn(xb)
  for _ in range(T - 1):
    out = out + snn(xb)
  return out


# --- tasks ----------------------------------------------------------------------------------------------------------


def task_ann(job, ann, data) -> dict:
  res = {}
  check = data["check_logits"]
  with torch.no_grad():
    logits = ann(to_nchw(data["test_x"][:len(check)])).numpy()
  diff = np.abs(logits - check)
  res["logit_check_images"] = int(len(check))
  res["logit_max_abs_diff"] = float(diff.max())
  res["logit_max_rel_diff"] = float(diff.max() / np.abs(check).max())
  res["argmax_agree"] = float((logits.argmax(-1) == check.argmax(-1)).mean())
  for split in ("test", "val"):
    if f"{split}_x" in data and len(data[f"{split}_x"]):
      x, y = data[f"{split}_x"], data[f"{split}_y"]
      hits = 0
      with torch.no_grad():
        for i in range(0, len(x), job["batch"]):
          hits += int((ann(to_nchw(x[i:i + job["batch"]])).argmax(-1).numpy() == y[i:i + job["batch"]]).sum())
      res[f"{split}_accuracy"] = hits / len(x)
  print(f"  torch ANN: max |logit diff| {res['logit_max_abs_diff']:.2e} on {len(check)} test images",
        file=sys.stderr, flush=True)
  return res


def task_curves(job, ann, data, calib, task) -> dict:
  """Each recipe's accuracy curve on a split, from its finished result in ``job["cache_dir"]`` when one is there
  for this job, else simulated (resuming from its per-batch checkpoint) and then stored there."""
  split, max_T = task["split"], task["max_T"]
  x, y = data[f"{split}_x"], data[f"{split}_y"]
  cache = pathlib.Path(job["cache_dir"])
  cache.mkdir(parents=True, exist_ok=True)
  res = {}
  for recipe in task["recipes"]:
    key = f"sj_{recipe}_{split}_T{max_T}_n{len(x)}_b{job['batch']}"
    done = cache / f"{key}.json"
    if done.exists():
      entry = json.loads(done.read_text())
      if entry.pop("fingerprint") == job["fingerprint"]:
        print(f"  SpikingJelly {recipe} on {split}: read back from {done}", file=sys.stderr, flush=True)
        res[recipe] = entry
        continue
    snn = convert(ann, recipe, calib)
    entry = {"convert_s": _CONVERTED[recipe][1]}
    starts = None
    if SJ_RECIPES[recipe][1]:
      raw = delay_start(snn, calib[:1])  # one batch, as estimate_delay_start's default
      entry["delay_start_raw"] = raw
      starts = delayed_starts(raw, max_T)
    entry.update(curves(snn, x, y, job["batch"], max_T, job["arch"]["num_classes"], starts,
                        f"SpikingJelly {recipe} on {split}", cache / f"{key}.progress.npz", job["fingerprint"]))
    tmp = done.with_name(done.name + ".tmp")
    tmp.write_text(json.dumps({**entry, "fingerprint": job["fingerprint"]}, allow_nan=False))
    os.replace(tmp, done)
    (cache / f"{key}.progress.npz").unlink(missing_ok=True)  # the finished curve replaces its checkpoint
    res[recipe] = entry
  return res


def task_speed(job, ann, data, calib, task) -> dict:
  """torch's ANN pass and each recipe's T steps on one batch (median of ``job["repeats"]`` after a warm-up)."""
  xb = to_nchw(data["test_x"][:job["batch"]])
  with torch.no_grad():
    ann_s = timed(lambda: ann(xb), job["repeats"])
  print(f"  torch ANN: {job['batch'] / ann_s:,.0f} images/s (batch {job['batch']})", file=sys.stderr, flush=True)
  res = {"ann_pass_s": ann_s, "recipes": {}}
  for recipe in task["recipes"]:
    snn = convert(ann, recipe, calib)
    with torch.no_grad():
      t = timed(lambda: snn_steps(snn, xb, task["T"]), job["repeats"])
    res["recipes"][recipe] = {"snn_s": t, "img_steps_per_s": job["batch"] * task["T"] / t}
    print(f"  SpikingJelly {recipe}: {job['batch'] * task['T'] / t:,.0f} images*steps/s "
          f"(batch {job['batch']}, T = {task['T']})", file=sys.stderr, flush=True)
  return res


def versions() -> dict:
  import spikingjelly
  try:
    from importlib.metadata import version
    sj = version("spikingjelly")
  except Exception:  # noqa: BLE001 (metadata is informational)
    sj = getattr(spikingjelly, "__version__", "unknown")
  return {"torch": torch.__version__, "spikingjelly": sj, "python": platform.python_version(),
          "torch_threads": torch.get_num_threads()}


def main():
  job_path, out_path = map(pathlib.Path, sys.argv[1:3])
  job = json.loads(job_path.read_text())
  torch.set_num_threads(job.get("threads") or os.cpu_count())
  torch.manual_seed(0)
  logging.getLogger("torch._library.triton").setLevel(logging.ERROR)  # "Triton not available" on every CPU run
  try:  # SpikingJelly logs every conversion at INFO level
    from spikingjelly.logger import logger
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
  except Exception:  # noqa: BLE001 (logging is cosmetic)
    pass
  weights = dict(np.load(job["weights"]))
  data = dict(np.load(job["data"]))
  data["check_logits"] = weights.pop("check_logits")
  ann = build_ann(job["arch"], weights)
  calib_x = data["calib_x"]
  calib = [to_nchw(calib_x[i:i + job["batch"]]) for i in range(0, len(calib_x), job["batch"])]
  out = {"versions": versions()}
  for task in job["tasks"]:
    kind = task["kind"]
    print(f"[torch] {kind} {task.get('split', '')} {task.get('recipes', '')}", file=sys.stderr, flush=True)
    if kind == "ann":
      out["ann"] = task_ann(job, ann, data)
    elif kind == "curves":
      out.setdefault("curves", {})[task["split"]] = task_curves(job, ann, data, calib, task)
    elif kind == "speed":
      out["speed"] = task_speed(job, ann, data, calib, task)
    else:
      raise ValueError(f"_peers_torch: unknown task {kind!r}")
  tmp = out_path.with_suffix(".tmp")
  tmp.write_text(json.dumps(out, allow_nan=False))
  os.replace(tmp, out_path)


if __name__ == "__main__":
  main()
