"""CIFAR-100, full-size VGG16 (config C): the paper's 200-epoch recipe (see paper.py). Meant for a GPU."""
from experiments.configs.paper import paper_config


def get_config():
  return paper_config("cifar100", "vgg16")
