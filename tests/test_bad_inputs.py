"""Bad inputs get a clear error naming the problem and the fix (or are handled as documented)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from advprior.attacks import FGSM, PGD, FGSMSweep
from advprior.cli import run_task
from advprior.data.folder import FolderDataModule
from advprior.data.imagefiles import load_image
from advprior.models.checkpoint import CheckpointError, load_state_dict_into, read_state_dict
from advprior.models.vgg_small import build_vgg_small
from advprior.prior import ClassPCA, GaussianKDE
from advprior.prior.kde import ClassConditionalKDE
from tiny_pipeline import TINY

try:
    from imagenet_fixture import truncated_jpeg_bytes, write_jpeg
except ImportError:  # tests/ imported as a package
    from tests.imagenet_fixture import truncated_jpeg_bytes, write_jpeg

CLASSES = ("ant", "bee", "cat")


# ------------------------------------------------------------------------------------------ data=folder
def test_an_undecodable_training_file_is_skipped_and_counted_by_the_prior_stage(make_cfg, tmp_path, caplog):
    rng = np.random.default_rng(0)
    root = tmp_path / "tree"
    for split, n in (("train", 8), ("val", 2)):
        for label, name in enumerate(CLASSES):
            for j in range(n):
                write_jpeg(root / split / name / f"{name}_{j}.jpg", label, rng, size=(20, 20))
    bad = root / "train" / "bee" / "broken.jpg"
    bad.write_bytes(truncated_jpeg_bytes(rng))
    cfg = make_cfg(TINY + ["data=folder", f"data.root={root}", "data.image_size=32", "data.channels=1",
                           "data.num_workers=0", "stages=[prior]"])
    with caplog.at_level(logging.WARNING):
        metrics = run_task(cfg)  # the whole train split is the support set: the default
    assert metrics["prior/support_points"] == 3 * 8  # every decodable training image, not the broken one
    assert str(bad) in caplog.text and "1 of 25 image files undecodable and skipped" in caplog.text


def test_an_empty_class_folder_is_an_error_naming_it_before_any_training(make_cfg, tmp_path):
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        for j in range(4):
            write_jpeg(tmp_path / "tree" / name / f"{j}.jpg", label, rng, size=(20, 20))
    (tmp_path / "tree" / "dog").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*tree/dog holds no image files.*remove the folder"):
        FolderDataModule(tmp_path / "tree", num_workers=0).samples()
    cfg = make_cfg(["data=folder", f"data.root={tmp_path / 'tree'}", "data.num_workers=0", "stages=[train]",
                    "model=[shallow]"])
    with pytest.raises(ValueError, match="dog holds no image files"):
        run_task(cfg)
    assert not (Path(cfg.paths.store_dir) / "train").exists()  # nothing was trained
    (tmp_path / "pre" / "train" / "ant").mkdir(parents=True)  # the pre-split layout: same check on train/
    write_jpeg(tmp_path / "pre" / "train" / "ant" / "0.jpg", 0, rng)
    (tmp_path / "pre" / "train" / "bee").mkdir()
    (tmp_path / "pre" / "val").mkdir()
    with pytest.raises(ValueError, match="train/bee holds no image files"):
        FolderDataModule(tmp_path / "pre", num_workers=0).samples()


def test_a_16_bit_png_loads_with_its_values_not_white(tmp_path):
    values = (np.arange(16 * 16, dtype=np.float64).reshape(16, 16) * 257).astype(np.uint16)  # 0 .. 65535
    for name in CLASSES:
        (tmp_path / name).mkdir()
        Image.fromarray(values).save(tmp_path / name / "deep.png")
    assert Image.open(tmp_path / "ant" / "deep.png").mode.startswith("I")  # really 16-bit on disk
    want = values / 65535.0
    gray = np.asarray(load_image(str(tmp_path / "ant" / "deep.png"), "L"), dtype=np.float64) / 255
    assert np.abs(gray - want).max() <= 0.5 / 255 + 1e-12  # the nearest 8-bit level
    for channels in (1, 3):
        dm = FolderDataModule(tmp_path, image_size=16, channels=channels, val_fraction=0.0, test_fraction=0.0,
                              num_workers=0)
        x, _, _ = dm.split("train")[0]
        assert x.shape == (channels, 16, 16)
        assert torch.allclose(x, torch.from_numpy(want).float().expand(channels, 16, 16), atol=0.5 / 255 + 1e-6)


# ------------------------------------------------------------------------------------------ weights
def test_a_zero_byte_checkpoint_is_a_checkpoint_error_naming_it(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.touch()
    with pytest.raises(CheckpointError, match=r"empty\.pt is empty \(0 bytes\).*re-save"):
        read_state_dict(empty)
    with pytest.raises(CheckpointError, match="0 bytes"):
        load_state_dict_into(build_vgg_small(10, widths=(4, 4, 8, 8, 8), hidden=16), empty)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match=r"could not read checkpoint .*garbage\.pt"):
        read_state_dict(garbage)


def test_a_bare_network_state_dict_like_torchvisions_loads_into_the_classifier(tmp_path):
    """torchvision's weight files hold the network's own keys (features.0.weight, ...), without the
    Classifier's ``net.`` prefix and normalization buffers."""
    torch.manual_seed(0)
    source = build_vgg_small(10, widths=(4, 4, 8, 8, 8), hidden=16)
    torch.save(source.net.state_dict(), tmp_path / "bare.pt")
    assert not any(k.startswith("net.") for k in torch.load(tmp_path / "bare.pt", weights_only=True))
    torch.manual_seed(1)
    target = build_vgg_small(10, widths=(4, 4, 8, 8, 8), hidden=16)
    assert load_state_dict_into(target, tmp_path / "bare.pt") is target
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k
    wrong = build_vgg_small(7, widths=(4, 4, 8, 8, 8), hidden=16)  # other class count: a clear mismatch
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_state_dict_into(wrong, tmp_path / "bare.pt")


# ------------------------------------------------------------------------------------------ prior
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_features_are_refused_by_class_pca(bad):
    g = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(40, 6, generator=g), torch.arange(40) % 2
    feats[7, 3] = bad
    with pytest.raises(ValueError, match=r"features hold NaN or inf in 1 row\(s\) \(first: \[7\]"):
        ClassPCA(2).fit(feats, labels)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_kde_points_and_queries_are_refused(bad):
    g = torch.Generator().manual_seed(0)
    points = torch.randn(30, 3, generator=g, dtype=torch.float64)
    broken = points.clone()
    broken[4, 1] = bad
    with pytest.raises(ValueError, match="KDE points hold NaN or inf"):
        GaussianKDE().fit(broken)
    kde = GaussianKDE().fit(points)
    queries = points[:5].clone()
    queries[2, 0] = bad
    with pytest.raises(ValueError, match=r"KDE queries hold NaN or inf in 1 row\(s\) \(first: \[2\]"):
        kde.log_density(queries)
    padded = torch.zeros(2, 20, 3, dtype=torch.float64)
    padded[:, :15] = points[:30].reshape(2, 15, 3)
    padded[1, 18] = float("nan")  # padding rows beyond the counts are never read
    ClassConditionalKDE().fit(padded, torch.tensor([15, 15]))


# ------------------------------------------------------------------------------------------ attacks
class NaNModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(12, 3)

    def forward(self, x):
        out = self.lin(x.flatten(1))
        return out * torch.tensor([1.0, float("nan"), 1.0])


class NaNGradModel(nn.Module):
    """Finite scores whose input gradient is NaN at a 0 pixel (0 * d sqrt(x)/dx = 0 * inf)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(12, 3)

    def forward(self, x):
        x = x.flatten(1)
        return self.lin(x) + 0 * x.sqrt().sum(1, keepdim=True)


def _images(b=4, dtype=torch.float32):
    return torch.rand(b, 3, 2, 2, generator=torch.Generator().manual_seed(0)).to(dtype)


@pytest.mark.parametrize("attack", [lambda m: FGSM(m, 4 / 255), lambda m: FGSMSweep(m, [4 / 255]),
                                    lambda m: PGD(m, 4 / 255, 1 / 255, 2, random_start=False)])
def test_a_model_emitting_nan_scores_is_an_error_not_silent_clean_images(attack):
    x, y = _images(), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"model returned NaN or \+inf scores for 4 of 4 images"):
        attack(NaNModel())(x, y)
    x[0] = 0.0
    with pytest.raises(ValueError, match="gradient with respect to the images holds NaN"):
        attack(NaNGradModel())(x, y)


def test_an_unbatched_image_gets_the_batch_dimension_hint():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(ValueError, match=r"single \(C, H, W\) image.*images.unsqueeze\(0\)"):
        FGSM(model, 0.01)(_images(1)[0], torch.tensor(1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_other_float_images_are_cast_for_the_model_and_keep_their_dtype(dtype):
    """float16/float64 images with a float32 model: the model sees float32, the step happens in the
    images' dtype, so the result is FGSM's sign step on the images as given."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    x, y, eps = _images(8, dtype), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]), 8 / 255
    adv = FGSM(model, eps)(x, y)
    assert adv.dtype == dtype
    xr = x.float().requires_grad_(True)
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(xr), y), xr)
    assert torch.equal(adv, torch.clamp(x + eps * grad.sign().to(dtype), 0, 1))
    res = FGSMSweep(model, [eps]).sweep(x, y)
    assert res.adv_logits.dtype == torch.float32 and torch.equal(res.adv_images(0), adv)
