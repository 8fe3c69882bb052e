"""Models. Input shape and class count come from the dataset.

``cnn`` and ``cnn_mcmahan`` use 'same' padding so they fit any input of at least 4x4
(8x8 digits, 28x28 MNIST, 32x32 CIFAR); on 28x28 ``cnn_mcmahan`` is McMahan et al.
2017's CNN (1,663,370 parameters).
"""

from __future__ import annotations

from torch import nn

from fl.errors import ConfigError

MODELS = ("cnn", "cnn_bn", "cnn_mcmahan", "mlp", "logreg", "resnet18")


def _conv_net(shape: tuple[int, int, int], c1: int, c2: int, hidden: int, num_classes: int,
              batch_norm: bool = False) -> nn.Module:
    channels, height, width = shape
    flat = c2 * (height // 4) * (width // 4)
    layers: list[nn.Module] = []
    for c_in, c_out in ((channels, c1), (c1, c2)):
        layers.append(nn.Conv2d(c_in, c_out, 5, padding=2))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def _resnet18(shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 with a 3x3 stride-1 stem and no max-pool, for 32x32 inputs."""
    from torchvision.models import resnet18

    model = resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(shape[0], 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """A freshly initialised model; seed the global RNG first for reproducible weights."""
    dim = input_shape[0] * input_shape[1] * input_shape[2]
    if name == "cnn":
        if min(input_shape[1:]) < 4:
            raise ConfigError("model", name, f"needs inputs of at least 4x4, the data gives {input_shape}")
        return _conv_net(input_shape, 10, 20, 50, num_classes)
    if name == "cnn_bn":  # `cnn` with BatchNorm after each convolution (for FedBN)
        if min(input_shape[1:]) < 4:
            raise ConfigError("model", name, f"needs inputs of at least 4x4, the data gives {input_shape}")
        return _conv_net(input_shape, 10, 20, 50, num_classes, batch_norm=True)
    if name == "cnn_mcmahan":
        if min(input_shape[1:]) < 4:
            raise ConfigError("model", name, f"needs inputs of at least 4x4, the data gives {input_shape}")
        return _conv_net(input_shape, 32, 64, 512, num_classes)
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(dim, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(),
                             nn.Linear(200, num_classes))
    if name == "logreg":
        return nn.Sequential(nn.Flatten(), nn.Linear(dim, num_classes))
    if name == "resnet18":
        return _resnet18(input_shape, num_classes)
    raise ConfigError("model.name", name, f"must be one of {', '.join(MODELS)}")
