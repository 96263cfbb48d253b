"""CIFAR-10, VGG16 config C width 0.25 with QCFS activations (L = 4, lambda from 8.0), trained for conversion.

The recipe of the ReLU reference run (``cifar10_vgg16_w025.py``); only the activation differs.
"""
import dataclasses

from experiments.configs import cifar10_vgg16_w025


def get_config():
  return dataclasses.replace(cifar10_vgg16_w025.get_config(), qcfs_levels=4, qcfs_init_threshold=8.0)
