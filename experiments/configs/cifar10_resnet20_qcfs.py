"""CIFAR-10, ResNet-20 with QCFS activations (L = 4, lambda from 8.0), trained for conversion (Bu et al., ICLR 2022).

The recipe of the ReLU reference run (``cifar10_resnet20.py``: one-cycle over 30 epochs, the authors' augmentation,
5,000 training images held out for validation); only the activation differs.
"""
import dataclasses

from experiments.configs import cifar10_resnet20


def get_config():
  return dataclasses.replace(cifar10_resnet20.get_config(), qcfs_levels=4, qcfs_init_threshold=8.0)
