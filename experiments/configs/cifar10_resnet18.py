"""CIFAR-10, full-size ResNet-18 (CIFAR stem): the paper's 200-epoch recipe (see paper.py). Meant for a GPU."""
from experiments.configs.paper import paper_config


def get_config():
  return paper_config("cifar10", "resnet18")
