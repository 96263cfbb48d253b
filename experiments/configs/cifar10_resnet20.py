"""CIFAR-10, ResNet-20 (CIFAR stem, projection shortcuts), CPU-sized reference run (target ≥ 88 % test accuracy).

One-cycle schedule over 30 epochs instead of the usual 160-200 step-schedule epochs, to fit CPU time; the
authors' augmentation (reflect-pad 4, random crop, flip) and normalization; 5,000 training images held out for
validation.
"""
from jaxsnn.training import TrainConfig


def get_config() -> TrainConfig:
  return TrainConfig(
      dataset="cifar10", model="resnet20", batch_size=128, epochs=30, schedule="onecycle", learning_rate=0.1,
      momentum=0.9, nesterov=True, weight_decay=5e-4, val_examples=5000, augment="cifar", fast_conv=True,
      checkpoint_every=50, seed=0)
