"""ResNet-18 in CIFAR form: shapes follow the data set, the stem keeps small images' resolution."""

import torch
from torch import nn

from genfl_torch.model import build_resnet18, seeded_model


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


def test_group_norm_model_has_no_batch_norm_and_no_running_statistics():
    model = build_resnet18(num_classes=10, in_channels=1, mean=[0.3], std=[0.38], norm="group")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 20 and all(m.num_groups == 32 for m in norms)  # every BatchNorm of ResNet-18 replaced
    state = model.state_dict()
    assert not any("running_" in key or "num_batches_tracked" in key for key in state)
    assert all(value.is_floating_point() for value in state.values())  # nothing but weights to federate


def test_group_norm_model_trains_on_digits():
    from genfl_torch.data import Split
    from genfl_torch.digits import load_digits_arrays
    from conf_defaults import train_settings
    from genfl_torch.train import evaluate, train

    images, labels = load_digits_arrays()
    data = Split(images[:128], labels[:128])
    model = seeded_model(0, num_classes=10, in_channels=1, mean=[0.3], std=[0.38], norm="group")
    loss_before, _ = evaluate(model, data, torch.device("cpu"), 128, fast_cuda=True)
    # lr 0.005: from scratch on one small set, GroupNorm ResNet-18 diverges at the BatchNorm default 0.02
    train(model, data, train_settings(epochs=3, batch_size=16, lr=0.005, momentum=0.9, weight_decay=0.0),
          torch.device("cpu"), seed=0)
    loss_after, accuracy = evaluate(model, data, torch.device("cpu"), 128, fast_cuda=True)
    assert loss_after < 0.5 * loss_before and accuracy > 0.5


def test_unknown_norm_is_rejected_and_config_accepts_exactly_the_models_norms():
    import pytest

    from server_app.config import ConfigError, load_config
    from genfl_torch.model import NORMS

    with pytest.raises(ValueError, match="model.norm: unknown normalisation 'layer'"):
        build_resnet18(num_classes=10, in_channels=1, mean=[0.3], std=[0.38], norm="layer")
    for norm in NORMS:
        assert load_config([f"model.norm={norm}"]).model.norm == norm
    with pytest.raises(ConfigError, match="model.norm"):
        load_config(["model.norm=layer"])


def test_max_steps_caps_the_optimiser_steps_of_a_round():
    from genfl_torch.data import Split
    from conf_defaults import train_settings
    from genfl_torch.train import train

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
        train(model, data, train_settings(epochs=2, batch_size=10, lr=0.01, momentum=0.0, weight_decay=0.0, max_steps=7),
              torch.device("cpu"), seed=0)
        capped = len(steps)
        steps.clear()
        train(model, data, train_settings(epochs=2, batch_size=10, lr=0.01, momentum=0.0, weight_decay=0.0),
              torch.device("cpu"), seed=0)
    finally:
        torch.optim.SGD = original
    assert (capped, len(steps)) == (7, 20)


def test_a_short_last_batch_joins_the_previous_one():
    from genfl_torch.train import batch_bounds

    assert batch_bounds(66, 16) == [(0, 16), (16, 32), (32, 48), (48, 66)]  # a tail of 2 would explode BatchNorm
    assert batch_bounds(72, 16) == [(0, 16), (16, 32), (32, 48), (48, 64), (64, 72)]  # a tail of 8 is half a batch
    assert batch_bounds(5, 16) == [(0, 5)] and batch_bounds(1, 16) == [] and batch_bounds(17, 16) == [(0, 17)]
