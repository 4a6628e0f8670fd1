"""Key sensitivity: every config leaf is classified for every stage's key, and perturbing it changes the
key exactly when it is declared to (``advprior.keys``); content identity of data and weights."""
from __future__ import annotations

import copy
import inspect
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf, open_dict

from advprior import keys
from advprior.keys import AFFECTS, CONTENT, config_leaves, leaf_value, model_spec, stage_key
from advprior.pipeline import STAGES
from tiny_pipeline import ctx_for

try:
    from imagenet_fixture import make_fake_imagenet, write_jpeg
except ImportError:  # tests/ imported as a package
    from tests.imagenet_fixture import make_fake_imagenet, write_jpeg

for _module in STAGES.values():  # every stage registers its KeySpec when imported
    __import__(_module)


# ---------------------------------------------------------------------------------------- perturbations
# A different valid value for a leaf; ``None`` entries of this table skip the leaf (with the reason).
SPECIAL: dict[str, Any] = {
    "data._target_": None,  # another DataModule needs other arguments; its class is part of every data identity
    "attack.labels": "predicted",
    "prior.bandwidth": "silverman",
    "prior.kernel_cov": "full",
    "prior.feature_layer": "fc7",
    "trainer.accelerator": "cpu",
    "trainer.strategy": "ddp",
    "trainer.precision": "bf16-mixed",
    "data.on_bad_image": "error",
    "data.check": "header",
    "data.support_selection": "first",
    "target_model": "__other_model__",
    "stages": ["train"],
    "fooling.sources": "__first_model_list__",
    "fooling.targets": "__first_model_list__",
    "fooling.device": "cpu",
    "activations.epsilons": [0.85],
    "activations.change_layers": ["fc6"],
    "activations.figure_eps": 2.0,
    "activations.layers": ["conv1_1"],  # lists of distinct names: appending a copy would be invalid
    "fooling.encodings": ["cppn"],
    "fooling.cppn.activations": ["sine", "cos"],
}


def perturb(cfg, leaf: str, extra: dict[str, Any]) -> dict[str, Any] | None:
    """``{leaf: new value, ...}`` (aliases updated together) or None to skip."""
    if leaf in extra:
        return extra[leaf]
    if leaf in SPECIAL:
        v = SPECIAL[leaf]
        if v == "__first_model_list__":
            return {leaf: [next(iter(cfg.model))]}
        if v == "__other_model__":
            names = list(cfg.model)
            v = names[-1] if len(names) > 1 else None
            return None if v is None else {leaf: v}
        return None if v is None else {leaf: v}
    v = leaf_value(cfg, leaf)
    name = leaf.rsplit(".", 1)[-1]
    if name == "_target_":
        return {leaf: v + "Other"}
    if name == "lr_schedule":
        return {leaf: None if v else "cosine"}
    if isinstance(v, bool):
        return {leaf: not v}
    if isinstance(v, int):
        return {leaf: (1 if v == 3 else 3) if leaf == "data.channels" else v + 1}
    if isinstance(v, float):
        return {leaf: v + 0.125}
    if isinstance(v, str):
        return {leaf: v + "_x"}
    if isinstance(v, list):
        return {leaf: v + [v[-1]] if v else ["x"]}
    if v is None:
        ref = _declared_type(cfg, leaf)
        if "List" in ref or "list" in ref:
            return {leaf: [0.5]}
        if "str" in ref:
            return {leaf: "x"}
        if leaf.startswith("model.") and leaf.endswith(".train"):
            return {leaf: {"epochs": 1, "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}}}
        return {leaf: 3}
    raise AssertionError(f"no perturbation for {leaf}={v!r}: add one to SPECIAL")


def _declared_type(cfg, leaf: str) -> str:
    """The schema's type of ``leaf`` as text (``""`` where no schema declares it)."""
    parent, _, name = leaf.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    try:
        return str(node._get_node(name)._metadata.ref_type)
    except AttributeError:
        return ""


def resolved(cfg) -> dict[str, str]:
    out = {}
    for leaf in config_leaves(cfg):
        try:
            out[leaf] = json.dumps(leaf_value(cfg, leaf), sort_keys=True, default=str)
        except Exception:  # noqa: BLE001 (interpolations of run-time values, e.g. hydra:)
            out[leaf] = "<unresolvable>"
    return out


# ---------------------------------------------------------------------------------------- key walking
class Keys:
    """Every registered spec's key (per model where per_model) for a config; DataModules cached by config."""

    def __init__(self) -> None:
        self.modules: dict[str, Any] = {}

    def ctx(self, cfg):
        ctx = ctx_for(cfg)
        dkey = json.dumps(OmegaConf.to_container(cfg.data, resolve=True), sort_keys=True, default=str)
        if dkey not in self.modules:
            self.modules[dkey] = ctx.datamodule
        ctx._datamodule = self.modules[dkey]
        return ctx

    def targets(self, cfg) -> list[tuple[str, str | None]]:
        out = []
        for stage, spec in keys.SPECS.items():
            if spec.stage in ("train", "pretrained"):  # a model's identity: one of the two applies
                out += [(stage, m) for m in cfg.model if model_spec(cfg, m) is spec]
            elif spec.per_model:
                out += [(stage, m) for m in cfg.model]
            else:
                out.append((stage, None))
        return out

    def all(self, cfg) -> dict[tuple[str, str | None], str]:
        ctx = self.ctx(cfg)
        return {(s, m): stage_key(ctx, keys.SPECS[s], m) for s, m in self.targets(cfg)}


def expected_change(cfg0, cfg1, ctx0, ctx1, spec, model, delta: set[str]) -> bool:
    """Whether ``spec``'s key must change when the leaves in ``delta`` changed, by its declaration and its
    inputs' declarations (CONTENT leaves: when the content identity changed)."""
    kinds = {leaf: spec.classify(leaf, model) for leaf in delta}
    if any(k in (AFFECTS, None) for k in kinds.values()):
        return True
    for name in spec.inputs:
        if name == "models":
            inputs = [(model_spec(cfg1, n), n) for n in cfg1.model]
        elif name == "target_model":
            inputs = [(model_spec(cfg1, ctx1.target_model), ctx1.target_model)]
        elif name == "model":
            inputs = [(model_spec(cfg1, model), model)]
        else:
            inputs = [(keys.SPECS[name], None)]
        if any(expected_change(cfg0, cfg1, ctx0, ctx1, s, m, delta) for s, m in inputs):
            return True
    if spec.content is not None and CONTENT in kinds.values():
        return spec.content(ctx0, model) != spec.content(ctx1, model)
    return False


def walk(cfg0, extra: dict[str, Any], must: list, must_not: list) -> None:
    """Perturb every leaf of ``cfg0`` alone; check classification, declared sensitivity and the
    must/must-not table (``(stage, model, leaf)``), which is independent of the declarations."""
    cache = Keys()
    base = cache.all(cfg0)
    ctx0 = cache.ctx(cfg0)
    res0 = resolved(cfg0)
    unclassified = sorted({f"{s}: {leaf}" for leaf in config_leaves(cfg0) for s, m in base
                           if keys.SPECS[s].classify(leaf, m) is None})
    assert not unclassified, (
        "config leaves no KeySpec rule classifies (add a rule to the stage's KeySpec: AFFECTS, IGNORED or "
        f"CONTENT): {unclassified}")
    seen: dict[tuple[str, str | None, str], bool] = {}
    problems = []
    for leaf in config_leaves(cfg0):
        update = perturb(cfg0, leaf, extra)
        if update is None:
            continue
        cfg1 = copy.deepcopy(cfg0)
        with open_dict(cfg1):
            for k, v in update.items():
                OmegaConf.update(cfg1, k, v, merge=False)
        res1 = resolved(cfg1)
        delta = {k for k in res0 if res1.get(k) != res0[k]}
        after = cache.all(cfg1)
        ctx1 = cache.ctx(cfg1)
        for (stage, model), key in base.items():
            if (stage, model) not in after:
                continue
            changed = after[(stage, model)] != key
            seen[(stage, model, leaf)] = changed
            want = expected_change(cfg0, cfg1, ctx0, ctx1, keys.SPECS[stage], model, delta)
            if changed != want:
                problems.append(f"{stage}{'/' + model if model else ''}: {leaf} -> {update} "
                                f"{'changed' if changed else 'kept'} the key, declared {'' if want else 'not '}to")
    assert not problems, "\n".join(problems)
    for stage, model, leaf in must:
        assert seen[(stage, model, leaf)], f"{stage} key must depend on {leaf}"
    for stage, model, leaf in must_not:
        assert not seen[(stage, model, leaf)], f"{stage} key must not depend on {leaf}"


def with_all_args(cfg_overrides: list[str], target: str, present: set[str]) -> list[str]:
    """Overrides adding every constructor argument of DataModule ``target`` not in the config, at its
    default, so the walk covers arguments a config may set (the structured config lists them all)."""
    params = inspect.signature(get_class(target).__init__).parameters
    add = []
    for name, p in params.items():
        if name in ("self", "root") or name in present or p.default is inspect.Parameter.empty:
            continue
        value = "null" if p.default is None else str(p.default).lower() if isinstance(p.default, bool) else p.default
        add.append(f"++data.{name}={value}")
    return cfg_overrides + add


# ---------------------------------------------------------------------------------------- the walks
def test_every_leaf_of_the_digits_default_is_classified_and_keys_follow_the_declarations(make_cfg):
    base = ["logger=[wandb,csv]", "trainer.limit_train_batches=1.0", "trainer.limit_val_batches=1.0",
            "trainer.limit_test_batches=1.0"]
    cfg = make_cfg(base, fast=False)
    over = with_all_args(base, cfg.data._target_, set(cfg.data))
    walk(make_cfg(over, fast=False), extra={}, must=[
        ("attack", None, "trainer.limit_test_batches"), ("attack", None, "trainer.precision"),
        ("attack", None, "attack.epsilons"), ("attack", None, "attack.labels"), ("attack", None, "data.eval_subset"),
        ("attack", None, "model.shallow.train.optimizer.lr"),
        ("defense", None, "data.eval_subset"), ("defense", None, "data.eval_batch_size"),
        ("defense", None, "prior.bottleneck"), ("defense", None, "prior.weight"), ("defense", None, "seed"),
        ("defense", None, "model.vgg_small.dropout"),
        ("features", None, "model.vgg_small.hidden"), ("features", None, "data.support_per_class"),
        ("prior", None, "prior.n_components"), ("prior", None, "seed"),
        ("train", "vgg_small", "data.batch_size"), ("train", "vgg_small", "trainer.max_epochs"),
        ("train", "vgg_small", "trainer.precision"), ("train", "vgg_small", "data.val_fraction"),
    ], must_not=[
        ("attack", None, "attack.refocus_min_prob"), ("attack", None, "attack.conatural.nearest_k"),
        ("attack", None, "attack.conatural.max_distance"), ("attack", None, "attack.high_conf_threshold"),
        ("attack", None, "attack.figure_eps"), ("attack", None, "attack.n_boot"), ("attack", None, "prior.weight"),
        ("attack", None, "data.eval_batch_size"),
        ("defense", None, "attack.high_conf_threshold"), ("defense", None, "defense.panels"),
        ("features", None, "model.shallow.hidden"), ("features", None, "data.eval_subset"),
        ("prior", None, "prior.weight"),
        ("train", "vgg_small", "data.num_workers"), ("train", "vgg_small", "data.eval_subset"),
        ("train", "vgg_small", "model.shallow.hidden"), ("train", "vgg_small", "callbacks.fgsm_eval.num_images"),
        ("train", "vgg_small", "trainer.limit_val_batches"),
    ])


@pytest.fixture(scope="module")
def folder_trees(tmp_path_factory):
    """A tiny ImageFolder tree (3 classes x 8 images) and an identical copy elsewhere."""
    root = tmp_path_factory.mktemp("folder") / "tree"
    rng = np.random.default_rng(0)
    for label, name in enumerate(("ant", "bee", "cat")):
        for j in range(8):
            write_jpeg(root / name / f"{name}_{j}.jpg", label, rng, size=(20, 20))
    twin = root.parent / "twin"
    shutil.copytree(root, twin)
    return root, twin


def test_every_leaf_with_data_folder(make_cfg, folder_trees):
    root, twin = folder_trees
    base = ["data=folder", f"data.root={root}", "data.image_size=16", "data.num_workers=0",
            "model=[shallow_hidden]", "prior.feature_layer=fc1"]
    cfg = make_cfg(base, fast=False)
    over = with_all_args(base, cfg.data._target_, set(cfg.data))
    extra = {"data.root": {"data.root": str(twin)}, "data.val_fraction": {"data.val_fraction": 0.3}}
    walk(make_cfg(over, fast=False), extra=extra, must=[
        ("attack", None, "data.root"), ("attack", None, "data.image_size"), ("train", "shallow_hidden", "data.seed"),
        ("features", None, "data.support_per_class"),
    ], must_not=[("train", "shallow_hidden", "data.pin_memory"), ("attack", None, "data.on_bad_image")])


def test_every_leaf_with_imagenet_and_a_pretrained_model(make_cfg, tmp_path, monkeypatch):
    fake = make_fake_imagenet(tmp_path / "imagenet", num_classes=3, per_class_train=4, num_val=6, corrupt_one=False)
    devkit_copy, root_copy = tmp_path / "devkit_copy", tmp_path / "imagenet_copy"
    shutil.copytree(fake.devkit, devkit_copy)
    shutil.copytree(fake.root, root_copy)
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    from advprior.models.vgg import hub_weights_path
    hub_weights_path("vgg16").parent.mkdir(parents=True)
    hub_weights_path("vgg16").write_bytes(b"stand-in for torchvision's file" * 100)
    ckpt = tmp_path / "other.pt"
    ckpt.write_bytes(b"other weights" * 100)
    base = ["data=imagenet", f"data.root={fake.root}", "data.eval_subset=4", "data.support_per_class=2",
            "data.num_workers=0", "data.image_size=32", "data.resize_size=36", "model=[vgg16]"]
    cfg = make_cfg(base, fast=False)
    over = with_all_args(base, cfg.data._target_, set(cfg.data))
    extra = {
        "data.root": {"data.root": str(root_copy)},
        "data.devkit": {"data.devkit": str(devkit_copy)},
        "data.val_dir": {"data.val_dir": str(fake.root / "val")},  # the default folder, named: same data
        "data.eval_subset": {"data.eval_subset": 5, "data.val_subset": None},  # aliases
        "data.val_subset": {"data.val_subset": 5, "data.eval_subset": None},
        "data.support_per_class": {"data.support_per_class": 3},
        "model.vgg16.checkpoint": {"model.vgg16.checkpoint": str(ckpt)},
        "model.vgg16.weights": {"model.vgg16.weights": None},
        "model.vgg16.arch": {"model.vgg16.arch": "vgg19"},  # another hub file
        "model.vgg16.train": None,  # switching to training a VGG-16 here needs its optimizer config
    }
    (hub_weights_path("vgg19")).write_bytes(b"vgg19 stand-in" * 100)
    walk(make_cfg(over, fast=False), extra=extra, must=[
        ("attack", None, "trainer.precision"), ("attack", None, "model.vgg16.checkpoint"),
        ("pretrained", "vgg16", "model.vgg16.weights"), ("attack", None, "data.devkit"),
    ], must_not=[
        ("pretrained", "vgg16", "model.vgg16.allow_download"), ("attack", None, "data.val_dir"),
        ("attack", None, "data.support_per_class"), ("pretrained", "vgg16", "trainer.precision"),
        ("pretrained", "vgg16", "seed"),  # loaded weights: the seed does not matter
        ("attack", None, "trainer.devices"), ("attack", None, "trainer.max_epochs"),  # nothing trained here
    ])


# ---------------------------------------------------------------------------------------- results
def test_ignored_settings_give_the_same_weights_and_affecting_ones_other_weights(make_cfg):
    """The declarations against the real thing, on one machine: trained weights with settings declared
    ignored for ``train`` are bit-identical, with a setting declared affecting they differ."""
    from advprior.cli import run_task

    def weights(sub: str, over: list[str]) -> dict[str, torch.Tensor]:
        cfg = make_cfg(["stages=[train]", "model=[shallow]", *over], sub=sub)
        run_task(cfg)
        return torch.load(Path(cfg.paths.output_dir) / "models" / "shallow.pt", weights_only=True)

    base = weights("base", [])
    ignored = weights("ignored", ["callbacks=none", "trainer.log_every_n_steps=1", "data.eval_batch_size=100",
                                  "data.eval_subset=7", "attack.high_conf_threshold=0.9", "target_model=shallow"])
    assert all(torch.equal(base[k], ignored[k]) for k in base)
    other = weights("affecting", ["data.batch_size=32"])
    assert not torch.equal(base["net.logits.weight"], other["net.logits.weight"])
