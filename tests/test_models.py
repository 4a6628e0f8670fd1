"""Models: normalization inside, named layers, torchvision VGG loading through the real paths."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from advprior.models.checkpoint import CheckpointError, load_state_dict_into
from advprior.models.classifier import Classifier
from advprior.models.shallow import build_shallow
from advprior.models.vgg import build_torchvision_vgg, hub_weights_path
from advprior.models.vgg_small import build_vgg_small


def test_normalization_is_a_buffer_applied_inside():
    torch.manual_seed(0)
    m = build_vgg_small(10, in_channels=3, mean=[0.1, 0.2, 0.3], std=[0.5, 0.25, 2.0]).eval()
    x = torch.rand(2, 3, 32, 32)
    manual = (x - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.25, 2.0]).view(1, 3, 1, 1)
    assert torch.allclose(m(x), m.net(manual), atol=1e-6)
    sd = m.state_dict()
    assert "normalize.mean" in sd and "normalize.std" in sd
    assert not any(p is m.normalize.mean for p in m.parameters())


def test_vgg_small_named_layers_and_shapes():
    m = build_vgg_small(10, in_channels=1, widths=(4, 8, 8, 16, 16), hidden=32).eval()
    assert m.layer_names[:2] == ["conv1_1", "conv1_2"] and m.layer_names[-3:] == ["fc6", "fc7", "fc8"]
    logits, f = m.forward_with_features(torch.rand(3, 1, 32, 32), ["conv1_2", "conv3_1", "conv5_1", "fc6", "fc8"])
    assert f["conv1_2"].shape == (3, 4, 32, 32) and f["conv3_1"].shape == (3, 8, 8, 8)
    assert f["conv5_1"].shape == (3, 16, 2, 2) and f["fc6"].shape == (3, 32)
    assert torch.equal(f["fc8"], logits)
    assert (f["fc6"] >= 0).all()  # post-ReLU, as in Caffe/Lasagne VGG
    with pytest.raises(KeyError, match="unknown layer"):
        m.features(torch.rand(1, 1, 32, 32), ["conv9_9"])


def test_features_keep_autograd():
    m = build_vgg_small(10, widths=(4, 4, 4, 4, 4), hidden=8).eval()
    x = torch.rand(2, 1, 32, 32, requires_grad=True)
    _, f = m.forward_with_features(x, ["fc6"])
    (g,) = torch.autograd.grad(f["fc6"].sum(), x)
    assert g.abs().sum() > 0


def test_shallow_softmax_regression_is_linear():
    m = build_shallow(10, in_channels=1, image_size=8, hidden=0)
    assert m.layer_names == ["logits"]
    x, y = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    # affine: f(x) + f(y) - f(0) == f(x + y)
    z = torch.zeros(2, 1, 8, 8)
    assert torch.allclose(m(x) + m(y) - m(z), m(x + y), atol=1e-5)
    assert build_shallow(10, image_size=8, hidden=16).layer_names == ["fc1", "logits"]


@pytest.mark.parametrize("arch", ["vgg19", "vgg19_bn", "vgg16"])
def test_torchvision_vgg_layer_names(arch):
    m = build_torchvision_vgg(arch, weights=None)
    convs = [n for n in m.layer_names if n.startswith("conv")]
    assert len(convs) == {"vgg19": 16, "vgg19_bn": 16, "vgg16": 13}[arch]
    assert {"conv1_2", "conv3_1", "conv5_1", "fc6", "fc7", "fc8"} <= set(m.layer_names)
    assert isinstance(m.layer("fc6"), nn.ReLU) and isinstance(m.layer("fc8"), nn.Linear)


def test_vgg19_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    a = build_torchvision_vgg("vgg19", weights=None).eval()
    path = tmp_path / "vgg19.pt"
    torch.save(a.state_dict(), path)
    b = build_torchvision_vgg("vgg19", weights=None, checkpoint=str(path)).eval()
    x = torch.rand(1, 3, 32, 32)  # adaptive pooling makes small inputs valid; cheap on CPU
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
        _, fa = a.forward_with_features(x, ["conv5_1", "fc6"])
    assert fa["fc6"].shape == (1, 4096)


def test_vgg19_imagenet_weights_from_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(1)
    ref = build_torchvision_vgg("vgg19", weights=None).eval()
    path = hub_weights_path("vgg19")
    assert str(path).startswith(str(tmp_path)) and path.name.startswith("vgg19-")
    path.parent.mkdir(parents=True)
    torch.save(ref.net.state_dict(), path)  # what torchvision's file holds: the bare VGG's keys
    m = build_torchvision_vgg("vgg19", weights="imagenet").eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), ref(x))


def test_missing_imagenet_weights_error_says_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match=r"not found at .*empty.*allow_download=true"):
        build_torchvision_vgg("vgg19", weights="imagenet")


def test_truncated_and_mismatched_checkpoints(tmp_path):
    m = build_shallow(10, image_size=8)
    good = tmp_path / "good.pt"
    torch.save(m.state_dict(), good)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_state_dict_into(m, trunc)
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict_into(m, tmp_path / "nope.pt")
    other = build_shallow(5, image_size=8)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_state_dict_into(other, good)
    with pytest.raises(CheckpointError, match="missing"):
        load_state_dict_into(build_shallow(10, image_size=8, hidden=4), good)


def test_lightning_checkpoint_prefix_is_accepted(tmp_path):
    m = build_shallow(10, image_size=8)
    torch.save({"state_dict": {f"model.{k}": v for k, v in m.state_dict().items()}}, tmp_path / "l.ckpt")
    fresh = build_shallow(10, image_size=8)
    load_state_dict_into(fresh, tmp_path / "l.ckpt")
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), fresh.state_dict().values()))


def test_classifier_rejects_foreign_layers():
    net = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(ValueError, match="not submodules"):
        Classifier(net, [0.0], [1.0], {"x": nn.ReLU()}, 2)
