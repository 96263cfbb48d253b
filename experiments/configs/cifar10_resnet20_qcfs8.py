"""CIFAR-10, ResNet-20 with QCFS activations (L = 8, lambda from 8.0): the QCFS issue's fallback, since L = 4
(``cifar10_resnet20_qcfs.py``) cost 3.15 points of test accuracy against the ReLU net (more than one point).

The recipe of the ReLU reference run (``cifar10_resnet20.py``: one-cycle over 30 epochs, the authors' augmentation,
5,000 training images held out for validation); only the activation differs.
"""
import dataclasses

from experiments.configs import cifar10_resnet20


def get_config():
  return dataclasses.replace(cifar10_resnet20.get_config(), qcfs_levels=8, qcfs_init_threshold=8.0)
