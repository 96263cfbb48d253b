"""Test accuracy of a checkpoint on the full test set: ``python experiments/evaluate.py CONFIG.py CHECKPOINT``.

Prints one JSON line: loss, accuracy and the number of test images counted (every one of them).
"""
import argparse
import json

import common  # noqa: F401  (puts the repository root on sys.path for the configs)
from jaxsnn import data, training


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("config")
  parser.add_argument("checkpoint")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--split", default=None, help="tfds split (default: the dataset's test split)")
  args = parser.parse_args()
  config = training.load_config(args.config)
  spec = data.spec(config.dataset)
  arrays = data.load(config.dataset, args.split or spec.test_split, args.data_dir or config.data_dir)
  variables = training.load_variables(args.checkpoint)
  result = training.ann_metrics(training.ModelApply(training.build_model(config), train=False), variables,
                                data.batches(arrays, config.batch_size, train=False, mean=spec.mean, std=spec.std))
  print(json.dumps(dict(result._asdict(), checkpoint=args.checkpoint, split=args.split or spec.test_split)))


if __name__ == "__main__":
  main()
