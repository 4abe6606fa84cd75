"""SyCE explainer of a ten-class Fashion-MNIST classifier: each image is explained toward
its runner-up class. With more than two classes SyCE drops its symmetric term and trains
half of the images toward their runner-up class (README "Ten classes")."""

from configs import common


def get_config(preset: str = "small"):  # --config configs/fashion_ten_classes.py:paper
  c = common.experiment(common.fashion_mnist(tuple(range(10))), method="syce",
                        preset=preset)
  c.classifier.steps = 600
  c.explainer.batch_size = 80   # 8 images of each predicted class per step
  c.explainer.steps = 600
  return c
