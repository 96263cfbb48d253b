"""CIFAR-10, VGG16 config C at width 0.25 (1.8 M parameters), CPU-sized reference run (target ≥ 85 %).

Same layers as the paper's VGG16 (1×1 convs, AvgPool, FC 128→1024→1024→10 at this width); one-cycle schedule over
30 epochs; the authors' augmentation and normalization; 5,000 training images held out for validation.
"""
from jaxsnn.training import TrainConfig


def get_config() -> TrainConfig:
  return TrainConfig(
      dataset="cifar10", model="vgg16", model_kwargs={"width": 0.25}, batch_size=128, epochs=30,
      schedule="onecycle", learning_rate=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4, val_examples=5000,
      augment="cifar", fast_conv=True, checkpoint_every=50, seed=0)
