"""Trains one config: ``python experiments/train.py CONFIG.py WORKDIR [--max_iterations N]``.

Resumable: run the same command again after a kill and it continues from ``WORKDIR/last.jaxsnn``.
Runs under tcmalloc when it is installed (~1.4x faster on CPU, see ``experiments/common.py``).
"""
import argparse
import json

import common  # noqa: F401  (puts the repository root on sys.path: experiments.configs import each other)
from jaxsnn import training


def main():
  training.use_tcmalloc()
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("config")
  parser.add_argument("workdir")
  parser.add_argument("--max_iterations", "--max_steps", dest="max_iterations", type=int, default=None,
                      help="stop after this many training iterations (--max_steps: the old spelling)")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--no_progress", action="store_true")
  args = parser.parse_args()
  config = training.load_config(args.config)
  if args.data_dir:
    config.data_dir = args.data_dir
  summary = training.train_and_evaluate(config, args.workdir, max_iterations=args.max_iterations,
                                        progress=not args.no_progress)
  print(json.dumps(summary, indent=1))


if __name__ == "__main__":
  main()
