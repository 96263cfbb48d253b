"""The paper's recipe (the authors' code): SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 128, 200 epochs,
lr × 0.2 at epochs 60 / 120 / 160, reflect-pad-4 crop + flip. Used by the full-size ``cifar*_vgg16`` and
``cifar*_resnet18`` configs (GPU runs). 5,000 training images are held out for validation (the authors train on
all 50,000); set ``val_examples=0`` to train on all of them, and the last epoch is then kept.
"""
from jaxsnn.training import TrainConfig


def paper_config(dataset: str, model: str) -> TrainConfig:
  return TrainConfig(
      dataset=dataset, model=model, batch_size=128, epochs=200, schedule="step", learning_rate=0.01,
      step_epochs=(60, 120, 160), step_factor=0.2, momentum=0.9, weight_decay=5e-4, val_examples=5000,
      augment="cifar", fast_conv=False, checkpoint_every=200, seed=0)
