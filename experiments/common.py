"""What the experiment scripts share: paths, configs, checkpoints, data batches, atomic JSON, the CPU allocator.

Every script in ``experiments/`` imports this module (``import common``: the script's own directory is on the
path) and nothing from another script; all conversion logic is library code (``jaxsnn``). Importing it puts the
repository root on ``sys.path`` so that ``experiments.configs`` is importable from any working directory.

Committed reference checkpoints live in ``experiments/checkpoints/NAME.msgpack`` with ``NAME.config.json`` and
``NAME.metrics.jsonl``; a run directory of ``experiments/train.py`` holds ``config.json``, ``best.msgpack`` and
``metrics.jsonl``; :func:`run_files` accepts either.

The CPU allocator (:func:`use_tcmalloc`): Runs a script under tcmalloc when the machine has it: CPU training here spends a third of its time in the kernel.

XLA:CPU allocates and frees its temporary buffers on every step. Under glibc's malloc, buffers above the mmap
threshold (the im2col and activation buffers of a CIFAR batch are tens of MB) are mmap'ed and unmapped each time,
so every step page-faults its whole working set back in. Measured on a CIFAR-10 ResNet-20 training step (batch
128, 2 cores): 246,000 minor page faults and 12.3 s of system time per 15 steps under glibc; 16,000 faults and
4.0 s under tcmalloc with ``TCMALLOC_RELEASE_RATE=0``; 103 → 147 images/s. The numbers computed are the same
(the allocator only changes where buffers live).

Call ``use_tcmalloc()`` at the start of a script's ``main()`` (the re-exec then costs one more import of jax). It re-runs
the process with tcmalloc preloaded when ``libtcmalloc_minimal.so.4`` is installed (Debian/Ubuntu package
``libtcmalloc-minimal4``; ``scripts/setup_offline_data.sh`` installs it) and does nothing otherwise. Set
``JAXSNN_MALLOC=system`` to keep the system allocator.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
import sys
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))  # experiments.configs.* import each other as a package

CHECKPOINTS = ROOT / "experiments" / "checkpoints"
DEFAULT_RUN = CHECKPOINTS / "fashion_mnist_small_cnn"
RUNS = ROOT / "experiments" / "runs"  # default output of scripts (ignored by git); committed results are elsewhere


def load_config(path):
  """The ``TrainConfig`` of a config file (``experiments/configs/*.py``, which defines ``get_config()``)."""
  module_spec = importlib.util.spec_from_file_location("config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config()


def run_files(run) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
  """(config, checkpoint, metrics) paths of a run directory or of a committed checkpoint ``.../NAME[.msgpack]``."""
  run = pathlib.Path(run)
  if run.is_dir():
    files = run / "config.json", run / "best.msgpack", run / "metrics.jsonl"
  else:
    stem = str(run)[:-len(".msgpack")] if run.name.endswith(".msgpack") else str(run)
    files = tuple(pathlib.Path(stem + ext) for ext in (".config.json", ".msgpack", ".metrics.jsonl"))
  missing = [str(f) for f in files if not f.is_file()]
  if missing:
    raise SystemExit(f"--run {run}: missing {', '.join(missing)}. Pass a run directory of experiments/train.py "
                     "(config.json, best.msgpack, metrics.jsonl) or a committed checkpoint such as "
                     "experiments/checkpoints/cifar10_resnet20 (.msgpack, .config.json, .metrics.jsonl).")
  return files


def resolve_run(name_or_path) -> pathlib.Path:
  """A committed checkpoint name (``cifar10_resnet20``) or a path, as a path for :func:`run_files`."""
  path = pathlib.Path(name_or_path)
  if not path.exists() and not path.with_suffix(".msgpack").exists() and (CHECKPOINTS / f"{name_or_path}.msgpack").exists():
    return CHECKPOINTS / str(name_or_path)
  return path


def best_epoch(run) -> dict:
  """The metrics line of the run's best validation accuracy (the epoch best.msgpack holds)."""
  lines = run_files(run)[2].read_text().splitlines()
  metrics = [json.loads(line) for line in lines if line.strip()]
  return max((m for m in metrics if "val_accuracy" in m), key=lambda m: m["val_accuracy"], default={})


@dataclasses.dataclass
class Run:
  """A trained network with its data: what every conversion experiment starts from."""
  name: str
  config: Any
  model: Any
  apply_fn: Callable
  variables: Any
  train: Any  # data.Arrays of the training split (validation held out): thresholds come from here only
  test: Any  # data.Arrays of the test split
  spec: Any

  def normalize(self, images):
    from jaxsnn import data
    return data.normalize(images, self.spec.mean, self.spec.std)


def load_run(run, data_dir: Optional[str] = None) -> Run:
  """Loads a committed checkpoint or run directory, its model, and its dataset's train and test splits."""
  from jaxsnn import data, training
  config_file, checkpoint, _ = run_files(run)
  config = training.TrainConfig(**json.loads(config_file.read_text()))
  model = training.build_model(config)
  variables = training.load_variables(checkpoint)
  variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
  apply_fn = lambda v, x: model.apply(v, x, train=False)  # noqa: E731
  spec = data.spec(config.dataset)
  split = data.splits(config.dataset, config.val_examples)
  data_dir = data_dir or config.data_dir
  train = data.load(config.dataset, split["train"], data_dir=data_dir)
  test = data.load(config.dataset, split["test"], data_dir=data_dir)
  name = pathlib.Path(str(checkpoint)).stem if checkpoint.name != "best.msgpack" else pathlib.Path(run).name
  return Run(name, config, model, apply_fn, variables, train, test, spec)


def first(arrays, n: Optional[int]):
  """The first ``n`` examples of a ``data.Arrays`` (all of them for None)."""
  from jaxsnn import data
  return arrays if n is None else data.Arrays(arrays.images[:n], arrays.labels[:n])


def eval_batches(run: Run, arrays, batch_size: int) -> Iterator[tuple]:
  """``(x, labels, mask)`` batches of ``arrays`` (the last one padded and masked), normalised."""
  from jaxsnn import data
  for b in data.batches(arrays, batch_size, train=False, mean=run.spec.mean, std=run.spec.std):
    yield b["image"], b["label"], b["mask"]


def calibration_batches(run: Run, num_examples: int, batch_size: int) -> Iterator[tuple]:
  """``(x, mask)`` batches of the first ``num_examples`` training images: padding is masked out of the stats."""
  for x, _, mask in eval_batches(run, first(run.train, num_examples), batch_size):
    yield x, mask


def write_json(path, obj) -> None:
  """Writes ``obj`` as JSON atomically (temporary file, then rename): a killed run never leaves half a file."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  tmp.write_text(json.dumps(obj, indent=1))
  os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------------
# The CPU allocator.
# ----------------------------------------------------------------------------------------------------------------

LIBRARY = "libtcmalloc_minimal.so.4"
SEARCH_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
               "/usr/local/lib")


def tcmalloc_environ(environ: Mapping[str, str],
                     search_dirs: Sequence[str] = SEARCH_DIRS) -> Optional[dict[str, str]]:
  """The environment to re-exec with, or None when tcmalloc is off, missing or already loaded."""
  if environ.get("JAXSNN_MALLOC", "tcmalloc") == "system" or "tcmalloc" in environ.get("LD_PRELOAD", ""):
    return None
  for directory in search_dirs:
    path = os.path.join(directory, LIBRARY)
    if os.path.isfile(path):
      env = dict(environ)
      env["LD_PRELOAD"] = ":".join(p for p in (path, environ.get("LD_PRELOAD", "")) if p)
      env.setdefault("TCMALLOC_RELEASE_RATE", "0")  # keep freed pages: they are reused by the next step
      return env
  return None


def use_tcmalloc() -> None:
  """Re-executes the running script with tcmalloc preloaded if it is available (Linux only); else returns."""
  if not sys.platform.startswith("linux"):
    return
  env = tcmalloc_environ(os.environ)
  if env is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable] + sys.argv, env)
