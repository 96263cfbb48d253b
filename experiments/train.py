"""Trains one config: ``python experiments/train.py CONFIG.py WORKDIR [--max_steps N]``.

Resumable: run the same command again after a kill and it continues from ``WORKDIR/last.msgpack``.
Runs under tcmalloc when it is installed (~1.4x faster on CPU, see ``experiments/cpu_allocator.py``).
"""
import argparse
import importlib.util
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments.cpu_allocator import use_tcmalloc  # noqa: E402
from jaxsnn import training  # noqa: E402


def load_config(path: str) -> training.TrainConfig:
  module_spec = importlib.util.spec_from_file_location("config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config()


def main():
  use_tcmalloc()
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("config")
  parser.add_argument("workdir")
  parser.add_argument("--max_steps", type=int, default=None)
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--no_progress", action="store_true")
  args = parser.parse_args()
  config = load_config(args.config)
  if args.data_dir:
    config.data_dir = args.data_dir
  summary = training.train_and_evaluate(config, args.workdir, max_steps=args.max_steps,
                                        progress=not args.no_progress)
  print(json.dumps(summary, indent=1))


if __name__ == "__main__":
  main()
