from .activations import SmoothLeakyReLU, make_activation
from .layerwise import LayerTrace, LayerwiseNet
from .mlp import MLP
from .resnet import ResNet20

__all__ = ["LayerTrace", "LayerwiseNet", "MLP", "ResNet20", "SmoothLeakyReLU", "make_activation"]
