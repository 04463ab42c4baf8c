"""Per-node BatchNorm statistics are the total mean/variance of the node's data, whatever its order
(issue 28 item 2): a deployed node reads its images sorted by class, and an average of per-batch
variances drops the between-batch (here between-class) term. Real digits, real torch models.
"""

import numpy as np
import pytest
import torch
from torch import nn

from genfl_torch.bn import bn_statistics
from genfl_torch.data import Split
from genfl_torch.digits import load_digits_arrays
from genfl_protocol.mixing import combine_bn_statistics
from genfl_torch.model import seeded_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sorted_digits() -> Split:
    """1,200 digits sorted by class, as a node's image folder is read."""
    images, labels = load_digits_arrays()
    images, labels = images[:1200], labels[:1200]
    order = torch.argsort(labels, stable=True)
    return Split(images[order], labels[order])


def _shuffled(data: Split, seed: int) -> Split:
    return data.subset(np.random.default_rng(seed).permutation(len(data)))


def _input_bn(kind: str) -> tuple[nn.Module, str, callable]:
    """A model whose only BatchNorm sees the raw images; the numpy truth over every position per channel."""
    if kind == "pixels":  # one channel per pixel: 64 features
        return nn.Sequential(nn.Flatten(), nn.BatchNorm1d(64)), "1", lambda x: x.reshape(len(x), -1)
    return nn.Sequential(nn.BatchNorm2d(1), nn.Flatten()), "0", lambda x: x.transpose(1, 0, 2, 3).reshape(1, -1).T


@pytest.mark.parametrize("kind", ["pixels", "image"])
def test_input_batchnorm_statistics_are_the_total_mean_and_variance_in_any_order(sorted_digits, kind):
    model, name, positions = _input_bn(kind)
    x = positions(sorted_digits.images.numpy().astype(np.float64))
    mean, var = x.mean(0), x.var(0, ddof=1)
    for data in (sorted_digits, _shuffled(sorted_digits, 1)):
        stats = bn_statistics(model, data, CPU, batch_size=32, seed=0)
        np.testing.assert_allclose(stats[f"{name}.running_var"], var, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(stats[f"{name}.running_mean"], mean, rtol=1e-5, atol=1e-7)
    if kind == "pixels":
        # What the old pass reported: the mean of per-batch variances over class-sorted batches of 32.
        batches = [x[a:a + 32] for a in range(0, len(x), 32)]
        within = np.mean([b.var(0, ddof=1) for b in batches], axis=0)
        print(f"per-pixel variance, mean over pixels: total {var.mean():.4f}, mean of batch variances {within.mean():.4f}")
        assert within.mean() < 0.6 * var.mean()  # the bias the fix removes (0.041 vs 0.073 here)


def test_resnet18_first_batchnorm_variance_on_class_sorted_digits_is_the_total_variance(sorted_digits):
    model = seeded_model(0, num_classes=10, in_channels=1, mean=[0.3], std=[0.38])
    stats = bn_statistics(model, sorted_digits, CPU, batch_size=512, seed=0)  # the default eval batch
    with torch.no_grad():  # the first BatchNorm's input: the stem convolution of the normalised images
        conv = model[1].conv1(model[0](sorted_digits.images)).numpy().astype(np.float64)
    per_channel = conv.transpose(1, 0, 2, 3).reshape(conv.shape[1], -1)
    np.testing.assert_allclose(stats["1.bn1.running_var"], per_channel.var(1, ddof=1), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats["1.bn1.running_mean"], per_channel.mean(1), rtol=1e-5, atol=1e-6)


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, stride=2), nn.BatchNorm2d(16))


def test_deeper_statistics_hardly_depend_on_the_data_order_and_a_seed_repeats_them(sorted_digits):
    """Deeper layers see train-mode-normalised inputs; the seeded shuffled pass keeps those batches
    mixed-class, so a class-sorted node and a shuffled one report nearly the same statistics."""
    model = _small_cnn()
    a = bn_statistics(model, sorted_digits, CPU, batch_size=128, seed=3)
    again = bn_statistics(model, sorted_digits, CPU, batch_size=128, seed=3)
    assert all(np.array_equal(a[k], again[k]) for k in a)
    b = bn_statistics(model, _shuffled(sorted_digits, 2), CPU, batch_size=128, seed=3)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=0.03, atol=1e-3, err_msg=key)


def test_the_models_buffers_and_hooks_are_left_alone_even_when_the_pass_fails(sorted_digits):
    model = seeded_model(0, num_classes=10, in_channels=1, mean=[0.3], std=[0.38])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bn_statistics(model, _shuffled(sorted_digits, 0).subset(range(64)), CPU, batch_size=32, seed=0)
    with pytest.raises(RuntimeError):  # 3 channels into a 1-channel stem
        bn_statistics(model, Split(torch.rand(8, 3, 8, 8), torch.zeros(8, dtype=torch.long)), CPU, 4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_pre_hooks for m in model.modules())
    with pytest.raises(ValueError, match="at least 2 images"):
        bn_statistics(model, Split(torch.rand(1, 1, 8, 8), torch.zeros(1, dtype=torch.long)), CPU, 4)


def test_nodes_statistics_combine_into_the_total_variance_of_their_union(sorted_digits):
    """Two nodes with different classes and a shifted brightness: each node's report, combined by
    the server, is the statistic of the union (the between-node term included)."""
    model, name, positions = _input_bn("pixels")
    low, high = sorted_digits.labels < 5, sorted_digits.labels >= 5
    a = Split(sorted_digits.images[low], sorted_digits.labels[low])
    b = Split(sorted_digits.images[high] * 0.5 + 0.4, sorted_digits.labels[high])
    combined = combine_bn_statistics([(bn_statistics(model, part, CPU, 32, seed=0), float(len(part))) for part in (a, b)])
    union = positions(torch.cat([a.images, b.images]).numpy().astype(np.float64))
    # Each node's variance is unbiased over its own positions; weighting by images makes the pooled one
    # exact up to O(1 / positions).
    np.testing.assert_allclose(combined[f"{name}.running_var"], union.var(0, ddof=1), rtol=2e-3, atol=1e-6)
    np.testing.assert_allclose(combined[f"{name}.running_mean"], union.mean(0), rtol=1e-5, atol=1e-7)
