"""The ImageNet/VGG path end to end on a generated stand-in: the fake devkit tree, a torchvision VGG with
random weights loaded through the real checkpoint path, the FGSM study with WordNet categories, the prior
and the defense (64x64 crops instead of 224 to keep VGG cheap on a CPU)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from advprior.analysis.outcomes import read_outcomes
from advprior.cli import run_task
from advprior.models.vgg import build_torchvision_vgg

try:
    from imagenet_fixture import make_fake_imagenet
except ImportError:  # tests/ imported as a package
    from tests.imagenet_fixture import make_fake_imagenet


def test_paper_experiment_runs_on_a_fake_imagenet(make_cfg, tmp_path):
    fake = make_fake_imagenet(tmp_path / "imagenet", num_classes=5, per_class_train=6, num_val=6)
    torch.manual_seed(0)
    ckpt = tmp_path / "vgg16.pt"
    torch.save(build_torchvision_vgg("vgg16", weights=None, num_classes=5).state_dict(), ckpt)
    cfg = make_cfg([
        "experiment=paper_imagenet", f"data.root={fake.root}", "data.eval_subset=4", "data.num_workers=0",
        "data.batch_size=4", "+data.image_size=64", "+data.resize_size=73", "data.support_per_class=6", "model=[vgg16]", "target_model=vgg16",
        "stages=[train,attack,prior,defense]", f"model.vgg16.checkpoint={ckpt}",
        "model.vgg16.weights=null", "attack.epsilons=[2]", "attack.figure_eps=2", "attack.n_boot=50",
        "prior.n_components=3", "prior.bottleneck=2", "prior.ae.epochs=2", "prior.support_per_class=6",
        "defense.adaptive.pgd.steps=1", "defense.panels=1",
    ])
    metrics = run_task(cfg)
    run = Path(cfg.paths.output_dir)
    df = read_outcomes(run / "attack" / "outcomes.parquet")
    # the first 4 val images in file-name order, less the corrupt one (val image 3), which is skipped
    assert len(df) == 3 and df["path"].str.contains("ILSVRC2012_val_").all()
    assert not df["path"].str.endswith(fake.corrupt.name).any()
    labels = {Path(p).name: lab for p, lab in zip(fake.val_files, fake.val_labels)}
    assert [labels[Path(p).name] for p in df["path"]] == df["label"].tolist()
    assert (df["linf"] <= 2 / 255 + 2 ** -24).all()
    assert set(pd.read_csv(run / "defense" / "summary.csv")["eps_255"].round(6)) == {2.0}
    assert 0 <= metrics["defense/eps=0.007843/post_clean_acc"] <= 1
    assert metrics["prior/support_points"] == 30
