"""Flax NNX networks. Each is built once, split with `nnx.split`, and used functionally."""

from cfx_jax.models.discriminator import Discriminator
from cfx_jax.models.generator import Generator, TwoHeadGenerator
from cfx_jax.models.reference_cnn import CNNClassifier
from cfx_jax.models.unet import UNet

__all__ = ["CNNClassifier", "Discriminator", "Generator", "TwoHeadGenerator", "UNet"]
