"""CIFAR-10, VGG16 config C width 0.25 with QCFS activations (L = 8, lambda from 8.0): the QCFS issue's fallback,
since L = 4 (``cifar10_vgg16_w025_qcfs.py``) cost 11.1 points of test accuracy against the ReLU net (underfitting in
30 epochs: 77.5 % training accuracy against 92.9 %).

The recipe of the ReLU reference run (``cifar10_vgg16_w025.py``); only the activation differs.
"""
import dataclasses

from experiments.configs import cifar10_vgg16_w025


def get_config():
  return dataclasses.replace(cifar10_vgg16_w025.get_config(), qcfs_levels=8, qcfs_init_threshold=8.0)
