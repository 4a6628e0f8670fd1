"""The ImageNet path of Figure 1: torchvision AlexNet (the source) loaded like VGG, and the paper experiment's
fooling stage with random-weight AlexNet and VGG-19 on a generated ImageNet tree at 64x64."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from advprior.cli import run_task
from advprior.models.alexnet import alexnet_weights_path, build_torchvision_alexnet
from advprior.models.checkpoint import CheckpointError

try:
    from imagenet_fixture import make_fake_imagenet
except ImportError:  # tests/ imported as a package
    from tests.imagenet_fixture import make_fake_imagenet


def test_alexnet_layer_names_and_shapes():
    torch.manual_seed(0)
    m = build_torchvision_alexnet(weights=None, num_classes=7).eval()
    assert m.layer_names == ["conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7", "fc8"]
    assert isinstance(m.layer("fc6"), nn.ReLU) and isinstance(m.layer("fc8"), nn.Linear)
    x = torch.rand(2, 3, 64, 64)  # adaptive pooling: 64x64 is the smallest convenient size
    with torch.no_grad():
        logits, feats = m.forward_with_features(x, ["conv1", "conv5", "fc6", "fc8"])
    assert logits.shape == (2, 7) and torch.equal(feats["fc8"], logits)
    assert feats["conv1"].shape[1] == 64 and feats["conv5"].shape[1] == 256 and feats["fc6"].shape == (2, 4096)


def test_alexnet_weights_follow_the_vgg_loading_rules(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match=r"alexnet not found at .*empty.*allow_download=true"):
        build_torchvision_alexnet(weights="imagenet")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(1)
    ref = build_torchvision_alexnet(weights=None).eval()
    path = alexnet_weights_path()
    assert str(path).startswith(str(tmp_path)) and path.name.startswith("alexnet-")
    path.parent.mkdir(parents=True)
    torch.save(ref.net.state_dict(), path)  # torchvision's file holds the bare AlexNet's keys
    hub = build_torchvision_alexnet(weights="imagenet").eval()
    ckpt = tmp_path / "alexnet.pt"
    torch.save(ref.state_dict(), ckpt)
    own = build_torchvision_alexnet(weights="imagenet", checkpoint=str(ckpt)).eval()  # a checkpoint wins
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(hub(x), ref(x)) and torch.equal(own(x), ref(x))
    with pytest.raises(ValueError, match="1000 classes"):
        build_torchvision_alexnet(weights="imagenet", num_classes=5)


def test_paper_experiment_evolves_on_alexnet_and_scores_on_vgg19(make_cfg, tmp_path):
    fake = make_fake_imagenet(tmp_path / "imagenet", num_classes=5, per_class_train=2, num_val=4)
    cfg = make_cfg([
        "experiment=paper_imagenet", f"data.root={fake.root}", "data.num_workers=0", "+data.image_size=64",
        "+data.resize_size=73", "model.vgg19.weights=null", "model.alexnet.weights=null", "stages=[fooling]",
        "fooling.population=6", "fooling.generations=2", "fooling.batch_size=6", "fooling.grid_samples=3",
        "fooling.n_resamples=100",
    ])
    assert list(cfg.model) == ["vgg19", "alexnet"] and cfg.target_model == "vgg19"
    assert list(cfg.fooling.sources) == ["alexnet"] and list(cfg.fooling.targets) == ["vgg19"]
    metrics = run_task(cfg)
    run = Path(cfg.paths.output_dir)
    scores = pd.read_csv(run / "fooling" / "scores.csv")
    assert set(scores["source"]) == {"alexnet"} and set(scores["scored_by"]) == {"alexnet", "vgg19"}
    assert len(scores) == 2 * 5 * 2  # both encodings x 5 classes x (source, target)
    summary = pd.read_csv(run / "fooling" / "summary.csv")
    assert summary[["source", "target"]].drop_duplicates().values.tolist() == [["alexnet", "vgg19"]]
    assert 0 <= metrics["fooling/alexnet/vgg19/cppn/transfer_rate"] <= 1
    elites = torch.load(run / "fooling" / "elites" / "alexnet_cppn_elites.pt", weights_only=True)
    assert elites["images"].shape == (5, 3, 64, 64)  # colour, at the data's input size
    for enc in ("cppn", "direct"):
        assert (run / "figures" / f"fooling_alexnet_to_vgg19_{enc}.png").is_file()
