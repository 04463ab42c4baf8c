"""ResNet-18 in CIFAR form: shapes follow the data set, the stem keeps small images' resolution."""

import torch
from torch import nn

from torchcore.model import build_resnet18, seeded_model


def test_digits_model_maps_8x8_grayscale_to_10_logits():
    model = build_resnet18(num_classes=10, in_channels=1, mean=[0.3], std=[0.38]).eval()
    assert model(torch.rand(5, 1, 8, 8)).shape == (5, 10)


def test_cifar100_model_has_cifar_stem_and_100_outputs():
    model = build_resnet18(num_classes=100, in_channels=3, mean=[0.5] * 3, std=[0.25] * 3).eval()
    net = model[1]
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, nn.Identity)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 100)
    assert 11_000_000 < sum(p.numel() for p in model.parameters()) < 11_300_000


def test_normalisation_constants_are_not_federated_weights():
    state = build_resnet18(num_classes=10, in_channels=1, mean=[0.3], std=[0.38]).state_dict()
    assert not any(key.startswith("0.") for key in state)
    assert "1.bn1.running_mean" in state and state["1.bn1.num_batches_tracked"].dtype == torch.int64


def test_seeded_model_is_reproducible():
    spec = dict(num_classes=10, in_channels=1, mean=[0.3], std=[0.38])
    a, b, c = seeded_model(0, **spec), seeded_model(0, **spec), seeded_model(1, **spec)
    assert torch.equal(a[1].fc.weight, b[1].fc.weight)
    assert not torch.equal(a[1].fc.weight, c[1].fc.weight)


def test_max_steps_caps_the_optimiser_steps_of_a_round():
    from torchcore.data import Split
    from torchcore.train import TrainSettings, train

    data = Split(torch.rand(100, 1, 8, 8), torch.arange(100) % 10)
    steps = []

    class Counting(torch.optim.SGD):
        def step(self, closure=None):
            steps.append(1)
            return super().step(closure)

    model = seeded_model(0, num_classes=10, in_channels=1, mean=[0.3], std=[0.38])
    original = torch.optim.SGD
    torch.optim.SGD = Counting
    try:
        train(model, data, TrainSettings(epochs=2, batch_size=10, lr=0.01, momentum=0.0, weight_decay=0.0, max_steps=7),
              torch.device("cpu"), seed=0)
        capped = len(steps)
        steps.clear()
        train(model, data, TrainSettings(epochs=2, batch_size=10, lr=0.01, momentum=0.0, weight_decay=0.0),
              torch.device("cpu"), seed=0)
    finally:
        torch.optim.SGD = original
    assert (capped, len(steps)) == (7, 20)
