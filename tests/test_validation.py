"""Structured configs: every invalid value fails before any work with a ``ConfigError`` that names the full key,
the bad value, what is allowed and a fix; the schemas type the composed config and stay in step with the
code they describe."""
from __future__ import annotations

import copy
import dataclasses
import inspect
import os
import re
import subprocess
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

import advprior.validation
from advprior.config import GROUPS, EntriesOf, check_node, rules
from advprior.config.groups import root_schema
from advprior.config.validate import check_group
from advprior.validation import ConfigError, validate_config
from conftest import CONF, ROOT, compose_cfg

_PARSER = OverridesParser.create()


@pytest.fixture(scope="module")
def cfg_for(tmp_path_factory):
    """``cfg_for(overrides, root)``: the config ``compose_cfg(root, overrides)`` gives, made quickly: the group
    selections (``data=folder``) are composed once per module, the value overrides are applied to a copy the
    way Hydra applies them (``OmegaConf.update``; ``+key`` adds a key), so schema typing applies as at
    compose time."""
    cache: dict[tuple, DictConfig] = {}
    groups = {p.name for p in CONF.iterdir() if p.is_dir()}

    def make(overrides: list[str], root: Path) -> DictConfig:
        parsed = _PARSER.parse_overrides(overrides)
        selections = tuple(o.input_line for o in parsed if o.key_or_group in groups and not o.is_add())
        if selections not in cache:
            cache[selections] = compose_cfg(tmp_path_factory.mktemp("compose"), list(selections))
        cfg = copy.deepcopy(cache[selections])
        with open_dict(cfg):
            cfg.paths.root_dir = str(root)
            cfg.paths.output_dir = str(root / "run")
        for o in parsed:
            if o.input_line in selections:
                continue
            if o.is_add():
                with open_dict(cfg):
                    OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True, force_add=True)
            else:
                OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
        HydraConfig.instance().set_config(cfg)
        return cfg
    yield make
    GlobalHydra.instance().clear()


@pytest.fixture
def fails_before_work(monkeypatch):
    """``fails_before_work(cfg, key)``: run the CLI's task on ``cfg`` with every kind of work booby-trapped and
    return the ``ConfigError`` naming ``key``; nothing was instantiated, built, read, trained or written (no
    run directory, config tree or store). The one exception: the digits split, which the prior's support-size check reads up
    front (in memory, no file)."""
    import hydra.utils
    import pytorch_lightning as pl

    import advprior.pipeline
    import advprior.stages.train
    from advprior.cli import run_task
    from advprior.data.digits import DigitsDataModule
    from advprior.data.folder import FolderDataModule
    from advprior.data.imagenet import ImageNetDataModule

    def trap(what):
        def fail(*args, **kwargs):
            raise AssertionError(f"{what} before the config was validated")
        return fail

    monkeypatch.setattr(advprior.pipeline, "run_pipeline", trap("the pipeline ran"))
    monkeypatch.setattr(advprior.stages.train, "build_model", trap("a model was built"))
    monkeypatch.setattr(pl.Trainer, "__init__", trap("a Trainer was made"))
    monkeypatch.setattr(FolderDataModule, "setup", trap("image files were read"))
    monkeypatch.setattr(ImageNetDataModule, "setup", trap("image files were read"))

    def run(cfg, key: str) -> ConfigError:
        if key not in ("prior.n_components", "prior.cv_folds"):
            monkeypatch.setattr(hydra.utils, "instantiate", trap("an object was instantiated"))
            monkeypatch.setattr(DigitsDataModule, "setup", trap("the digits were loaded"))
        with pytest.raises(ConfigError) as err:
            run_task(cfg)
        root = Path(cfg.paths.root_dir)  # the run directory, the logs and the store all live under it
        assert not root.exists() or not any(root.iterdir()), list(root.rglob("*"))
        assert err.value.key == key, str(err.value)
        return err.value
    return run


# The cases of issue 7, with the whole message a user sees.
ISSUE_CASES = [
    (["prior.bandwidth=-1"],
     "prior.bandwidth=-1: must be a positive number or one of scott, silverman, cv, loo, heldout (e.g. prior.bandwidth=scott)"),
    (["prior.bandwidth=foo"],
     "prior.bandwidth=foo: must be a positive number or one of scott, silverman, cv, loo, heldout (e.g. prior.bandwidth=scott)"),
    (["prior.bottleneck=0"], "prior.bottleneck=0: must be a positive integer (e.g. prior.bottleneck=4)"),
    (["prior.kernel_cov=diag"], "prior.kernel_cov=diag: must be one of isotropic, full (e.g. prior.kernel_cov=isotropic)"),
    (["attack.labels=maybe"],
     "attack.labels=maybe: must be true (attack the true labels, as the paper) or predicted (attack the model's own "
     "clean predictions) (e.g. attack.labels=true)"),
    (["attack.figure_eps=3"],
     "attack.figure_eps=3: must be one of attack.epsilons=[0.85,2,4,8,16,32] (e.g. attack.figure_eps=0.85)"),
    (["attack.epsilons=[0.85,300]", "attack.figure_eps=0.85"],
     "attack.epsilons=[0.85,300]: 300 / attack.scale=255 = 1.176 is above 1, but eps/attack.scale is in [0,1] pixel "
     "units (e.g. attack.epsilons=[0.85,2,4,8,16,32]); write each eps on the 0-255 scale (the paper's 0.85 means "
     "0.85/255)"),
    (["prior.support_per_class=20"],
     "prior.n_components=32: must be below the support images per class: the smallest class has 20 support images "
     "with prior.support_per_class=20 (e.g. prior.n_components=19); or give more support images per class "
     "(prior.support_per_class)"),
]


@pytest.mark.parametrize("overrides, message", ISSUE_CASES, ids=[" ".join(c[0]) for c in ISSUE_CASES])
def test_issue_cases_fail_before_work_naming_key_value_allowed_and_fix(cfg_for, tmp_path, fails_before_work,
                                                                       overrides, message):
    err = fails_before_work(cfg_for(overrides, tmp_path), message.split("=", 1)[0])
    assert str(err) == message
    assert "callbacks" not in str(err)  # the callback's interpolated copy of attack.* is never blamed


# Every other check: (overrides, the full key named, a fragment of what is allowed).
OTHER_CASES = [
    (["seed=-1"], "seed", "integer >= 0"),
    (["task_name=a/b"], "task_name", "without '/'"),
    (["target_model=resnet"], "target_model", "one of the configured models vgg_small, shallow"),
    (["stages=[trian]"], "stages", "trian is not a stage"),
    (["+prior.bandwith=0.5"], "prior.bandwith", "unknown key; did you mean prior.bandwidth?"),
    (["+model.vgg_small.hiden=3"], "model.vgg_small.hiden", "did you mean model.vgg_small.hidden?"),
    (["data.batch_size=-4"], "data.batch_size", "positive integer"),
    (["data.eval_batch_size=0"], "data.eval_batch_size", "positive integer"),
    (["data.eval_subset=0"], "data.eval_subset", "positive integer or null (all)"),
    (["data.support_per_class=0"], "data.support_per_class", "positive integer or null"),
    (["data.num_workers=-1"], "data.num_workers", "integer >= 0"),
    (["data.val_fraction=0"], "data.val_fraction", "in (0, 1)"),
    (["data.test_fraction=1.2"], "data.test_fraction", "in (0, 1)"),
    (["data.val_fraction=0.5", "data.test_fraction=0.5"], "data.test_fraction", "plus data.val_fraction=0.5 must be below 1"),
    (["data.channels=2"], "data.channels", "one of 1, 3"),
    (["data.image_size=4"], "data.image_size", "integer >= 8"),
    (["data.image_size=48"], "data.image_size", "divisible by 32: model.vgg_small has 5 pooling blocks"),
    (["data=folder"], "data.root", "a value is required"),
    (["data=folder", "data.root=/x", "data.resize_size=10"], "data.resize_size", "must be >= data.image_size=64"),
    (["data=folder", "data.root=/x", "data.on_bad_image=ignore"], "data.on_bad_image", "one of skip, error"),
    (["data=imagenet", "data.check=full"], "data.check", "one of decode, header, none"),
    (["data=imagenet", "data.val_subset=5"], "data.val_subset", "alias of data.eval_subset=64"),
    (["model.vgg_small.dropout=1.5"], "model.vgg_small.dropout", "in [0, 1)"),
    (["model.shallow.hidden=-3"], "model.shallow.hidden", "integer >= 0"),
    (["model.vgg_small.train.epochs=0"], "model.vgg_small.train.epochs", "positive integer"),
    (["model.vgg_small.train.optimizer.lr=0"], "model.vgg_small.train.optimizer.lr", "positive number"),
    (["model.vgg_small.train.lr_schedule=step"], "model.vgg_small.train.lr_schedule", "one of cosine, none"),
    (["model.vgg_small.widths=[16,0]"], "model.vgg_small.widths", "integers >= 1"),
    (["model.vgg_small.convs_per_block=[2,2]"], "model.vgg_small.convs_per_block", "one entry per block"),
    (["model=[vgg19]", "model.vgg19.arch=vgg11"], "model.vgg19.arch", "one of vgg16, vgg19, vgg19_bn"),
    (["model=[vgg19]", "model.vgg19.weights=random"], "model.vgg19.weights", "one of imagenet, none or null"),
    (["experiment=dropout", "model.vgg_small_nodropout.dropout=2"], "model.vgg_small_nodropout.dropout", "in [0, 1)"),
    (["attack.scale=0"], "attack.scale", "positive number"),
    (["attack.epsilons=[]"], "attack.epsilons", "non-empty list"),
    (["attack.epsilons=[-1,0.85]"], "attack.epsilons", "-1 is negative"),
    (["attack.epsilons=[0.85,0.85]"], "attack.epsilons", "appears more than once"),
    (["attack.scale=1", "attack.epsilons=[0.5,2]", "attack.figure_eps=0.5"], "attack.epsilons",
     "with attack.scale=255"),
    (["attack.labels=false"], "attack.labels", "must be true"),
    (["attack.high_conf_threshold=1.5"], "attack.high_conf_threshold", "in [0, 1]"),
    (["attack.refocus_min_prob=-0.1"], "attack.refocus_min_prob", "in [0, 1]"),
    (["attack.conatural.nearest_k=0"], "attack.conatural.nearest_k", "positive integer"),
    (["attack.conatural.max_distance=-1"], "attack.conatural.max_distance", "integer >= 0"),
    (["attack.shard_size=0"], "attack.shard_size", "positive integer"),
    (["attack.n_boot=0"], "attack.n_boot", "positive integer"),
    (["attack.grid_samples=0"], "attack.grid_samples", "positive integer"),
    (["attack.wandb_table_rows=-1"], "attack.wandb_table_rows", "integer >= 0"),
    (["prior.bandwidth=0"], "prior.bandwidth", "positive number"),
    (["prior.bottleneck=32"], "prior.bottleneck", "smaller than prior.n_components=32"),
    (["prior.n_components=0"], "prior.n_components", "positive integer"),
    (["prior.support_per_class=0"], "prior.support_per_class", "positive integer or null"),
    (["prior.depth=-1"], "prior.depth", "integer >= 0 or null"),
    (["prior.negative_slope=-0.1"], "prior.negative_slope", ">= 0"),
    (["prior.cv_folds=1"], "prior.cv_folds", "integer >= 2"),
    (["prior.weight=-0.5"], "prior.weight", ">= 0"),
    (["prior.top_k=0"], "prior.top_k", "positive integer or null"),
    (["prior.shard_size=0"], "prior.shard_size", "positive integer"),
    (["prior.feature_layer=''"], "prior.feature_layer", "a layer name"),
    (["prior.ae.epochs=0"], "prior.ae.epochs", "positive integer"),
    (["prior.ae.batch_size=0"], "prior.ae.batch_size", "positive integer"),
    (["prior.ae.lr=-1"], "prior.ae.lr", "positive number"),
    (["defense.adaptive.pgd.steps=-1"], "defense.adaptive.pgd.steps", "integer >= 0"),
    (["defense.adaptive.pgd.alpha_factor=0"], "defense.adaptive.pgd.alpha_factor", "positive number"),
    (["defense.adaptive.pgd.restarts=0"], "defense.adaptive.pgd.restarts", "positive integer"),
    (["defense.adaptive.pgd.restarts=2", "defense.adaptive.pgd.random_start=false"], "defense.adaptive.pgd.restarts",
     "must be 1 without random_start"),
    (["defense.adaptive.pgd.schedule=linear"], "defense.adaptive.pgd.schedule", "one of constant, cosine"),
    (["defense.adaptive.loss=hinge"], "defense.adaptive.loss", "one of ce, margin"),
    (["defense.adaptive.pgd.loss=hinge"], "defense.adaptive.pgd.loss", "one of ce, margin"),
    (["defense.adaptive.detector_aware.c=-1"], "defense.adaptive.detector_aware.c", ">= 0"),
    (["defense.adaptive.pgd.alpha_factor=20"], "defense.adaptive.pgd.alpha_factor", "> 1 pixel unit at eps=32"),
    (["defense.panels=-1"], "defense.panels", "integer >= 0"),
    (["prior.space=global"], "prior.space", "one of per_class, shared"),
    (["prior.val_fraction=1"], "prior.val_fraction", "in [0, 1)"),
    (["prior.bandwidth=heldout"], "prior.val_fraction", "must be > 0 for bandwidth=heldout"),
    (["prior.ae.patience=5"], "prior.val_fraction", "must be > 0 for ae.patience=5"),
    (["prior.ae.patience=0", "prior.val_fraction=0.2"], "prior.ae.patience", "positive integer or null"),
    (["prior.ae.min_delta=-1"], "prior.ae.min_delta", ">= 0"),
    (["trainer.accelerator=gpux"], "trainer.accelerator", "one of auto, cpu, gpu"),
    (["trainer.devices=0"], "trainer.devices", "positive number of devices"),
    (["trainer.devices=[]"], "trainer.devices", "positive number of devices"),
    (["trainer.precision=32bit"], "trainer.precision", "must be 32-true or bf16-mixed"),
    (["trainer.precision=16-mixed"], "trainer.precision", "float16 input gradients underflow"),
    (["trainer.strategy=ddp_spawn"], "trainer.strategy", "use trainer=ddp"),
    (["trainer.deterministic=maybe"], "trainer.deterministic", "true, false or warn"),
    (["trainer.max_epochs=0"], "trainer.max_epochs", "positive integer or null"),
    (["trainer.limit_train_batches=1.5"], "trainer.limit_train_batches", "a fraction in [0, 1]"),
    (["trainer.limit_test_batches=-2"], "trainer.limit_test_batches", "integer >= 0"),
    (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps", "positive integer"),
    (["callbacks.fgsm_eval.num_images=0"], "callbacks.fgsm_eval.num_images", "positive integer"),
    (["callbacks.fgsm_eval.prefix=/x"], "callbacks.fgsm_eval.prefix", "without a leading or trailing '/'"),
    (["callbacks.fgsm_eval.epsilons=[300]"], "callbacks.fgsm_eval.epsilons", "is above 1"),
    (["logger=[wandb]", "logger.wandb.log_model=sometimes"], "logger.wandb.log_model", "true, false or all"),
    (["paths.store_dir=''"], "paths.store_dir", "a directory"),
    (["prior.bandwidth=cv", "prior.cv_folds=500"], "prior.cv_folds", "at most the support images per class"),
]


@pytest.mark.parametrize("overrides, key, fragment", OTHER_CASES, ids=[" ".join(c[0]) for c in OTHER_CASES])
def test_invalid_values_fail_before_work_naming_the_full_key(cfg_for, tmp_path, fails_before_work, overrides, key,
                                                            fragment):
    msg = str(fails_before_work(cfg_for(overrides, tmp_path), key))
    assert msg.startswith(f"{key}=") and fragment in msg, msg


@pytest.mark.parametrize("overrides", [
    [], ["seed=0"], ["prior.bandwidth=1"], ["prior.bandwidth=0.5"], ["prior.bandwidth=silverman"],
    ["prior.bandwidth=cv"], ["prior.kernel_cov=full"], ["attack.labels=predicted"], ["attack.labels=true"],
    ["trainer.precision=bf16-mixed"], ["trainer.precision=32"], ["trainer.devices=auto"], ["trainer.devices=[0,1]"],
    ["trainer.deterministic=warn"], ["trainer.limit_train_batches=0.5"], ["+trainer.gradient_clip_val=1.0"],
    ["+model.vgg_small.train.optimizer.amsgrad=true"], ["logger.csv=null"], ["callbacks=none"],
    ["stages=[train,attack]"], ["stages=[]"], ["target_model=shallow"], ["data.image_size=64"],
    ["attack.scale=1", "attack.epsilons=[0.0033,0.5]", "attack.figure_eps=0.5"],
    ["data=folder", "data.root=/does/not/exist"], ["data=imagenet"], ["experiment=paper_imagenet"],
])
def test_valid_values_pass(cfg_for, tmp_path, overrides):
    checked = validate_config(cfg_for(overrides, tmp_path))
    assert checked[""].seed == 0


def test_the_cli_fails_on_a_bad_value_before_importing_torch(tmp_path):
    env = {**os.environ, "ADVPRIOR_ROOT": str(tmp_path), "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "advprior", "debug=fast", "logger=[csv]", "prior.bandwidth=-1"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "prior.bandwidth=-1: must be a positive number or one of scott, silverman, cv" in proc.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "omegaconf" in imported and "torch" not in imported and "pytorch_lightning" not in imported


def test_n_components_is_checked_against_the_real_digits_split(make_cfg):
    """Without support_per_class the support set is the whole training split: the bound is its smallest class,
    exactly (n_components = smallest - 1 passes, = smallest fails)."""
    dm = instantiate(make_cfg().data)
    smallest = int(torch.bincount(dm.split("train").labels).min())
    validate_config(make_cfg([f"prior.n_components={smallest - 1}"]))
    with pytest.raises(ConfigError) as err:
        validate_config(make_cfg([f"prior.n_components={smallest}"]))
    assert str(err.value).startswith(
        f"prior.n_components={smallest}: must be below the support images per class: the smallest class has "
        f"{smallest} support images (the whole training split)")
    # support_per_class above a class's size: the class's size is the bound
    validate_config(make_cfg(["data.support_per_class=1000", f"prior.n_components={smallest - 1}"]))
    # not checked when neither the prior nor the defense runs
    validate_config(make_cfg(["stages=[train,attack]", f"prior.n_components={smallest}"]))


def test_n_components_is_checked_against_support_per_class_without_reading_data(make_cfg):
    cfg = make_cfg(["data=folder", "data.root=/does/not/exist", "data.support_per_class=10", "prior.n_components=10"])
    with pytest.raises(ConfigError, match=r"^prior\.n_components=10: must be below the support images per class: "
                                          r"data\.support_per_class=10 "):
        validate_config(cfg)
    validate_config(make_cfg(["data=folder", "data.root=/does/not/exist", "data.support_per_class=10",
                              "prior.n_components=9"]))


def test_an_interpolated_copy_is_not_blamed(make_cfg):
    cfg = make_cfg(["attack.epsilons=[0.85,300]"])
    assert OmegaConf.is_interpolation(cfg.callbacks.fgsm_eval, "epsilons")
    # checked on its own, the callback group names where the value comes from
    with pytest.raises(ConfigError) as err:
        check_group(cfg, "callbacks", GROUPS["callbacks"])
    assert err.value.key == "attack.epsilons"
    assert str(err.value).startswith("attack.epsilons=[0.85,300]: 300 / callbacks.fgsm_eval.scale=255")
    assert str(err.value).endswith("(copied into callbacks.fgsm_eval.epsilons)")


def test_types_are_checked_at_compose_time(make_cfg):
    with pytest.raises(ConfigCompositionException) as err:
        make_cfg(["prior.n_components=abc"])
    assert "prior.n_components" in str(err.value.__cause__)
    with pytest.raises(ConfigCompositionException):
        make_cfg(["model.vgg_small.hidden=wide"])
    with pytest.raises(ConfigCompositionException):
        make_cfg(["data.batch_size=[1]"])


def _option_overrides(group: str, option: str) -> list[str]:
    if group == "model":
        return [f"model=[{option}]"]
    if group == "logger":
        return [f"logger=[{option}]"]
    return [f"{group}={option}"] + (["data.root=/x"] if option == "folder" else [])


YAML_OPTIONS = [(g, p.stem) for g in ("data", "model", "callbacks", "logger") for p in sorted((CONF / g).glob("*.yaml"))]


@pytest.mark.parametrize("group, option", YAML_OPTIONS)
def test_every_option_is_typed_by_the_schema_of_its_target(make_cfg, group, option):
    cfg = make_cfg(_option_overrides(group, option))
    spec = GROUPS[group]
    nodes = cfg[group].values() if isinstance(spec, EntriesOf) else [cfg[group]]
    for node in nodes:
        assert OmegaConf.get_type(node) is spec.schema_for(node._target_)
        assert OmegaConf.get_type(node) is not spec.other


@pytest.mark.parametrize("group", [g for g, s in GROUPS.items() if isinstance(s, type)])
def test_single_schema_groups_are_typed(make_cfg, group):
    assert OmegaConf.get_type(make_cfg()[group]) is GROUPS[group]


@pytest.mark.parametrize("group, option", [o for o in YAML_OPTIONS if o[1] != "none"])
def test_keys_only_the_schema_declares_have_the_targets_defaults(make_cfg, group, option):
    """Declaring a key the YAML leaves out must not change behaviour: its schema default is the default of
    the DataModule / builder / callback argument it feeds."""
    raw = yaml.safe_load((CONF / group / f"{option}.yaml").read_text())
    cfg = make_cfg(_option_overrides(group, option), fast=False)
    pairs = [(raw, cfg[group])] if not isinstance(GROUPS[group], EntriesOf) else \
        [(raw[name], cfg[group][name]) for name in raw if name != "defaults"]
    for raw_node, node in pairs:
        params = inspect.signature(get_object(node._target_)).parameters
        for key in node:
            if key in raw_node or key in ("frozen", "train", "checkpoint"):  # read by the train stage
                continue
            assert key in params, f"{group}/{option}: {key} is not an argument of {node._target_}"
            default = params[key].default
            value = OmegaConf.to_container(node)[key]
            assert value == (list(default) if isinstance(default, tuple) else default), (group, option, key)


def test_constants_match_the_code_they_describe():
    import lightning_fabric.connector as fabric
    from pytorch_lightning.accelerators import AcceleratorRegistry

    from advprior.config import data, models, runtime
    from advprior.data import imagefiles, imagenet
    from advprior.models import lit_classifier, vgg
    assert data.ON_BAD_IMAGE == imagefiles.ON_BAD_IMAGE and data.CHECKS == imagefiles.CHECKS
    assert data.SUPPORT_SELECTIONS == imagenet.SUPPORT_SELECTIONS
    assert set(models.VGG_ARCHS) == set(vgg.ARCHS)
    assert "step" not in models.LR_SCHEDULES and "cosine" in inspect.getsource(lit_classifier)
    lightning = {v for lit in typing.get_args(fabric._PRECISION_INPUT) for v in typing.get_args(lit)}
    assert set(runtime.PRECISIONS) <= lightning  # the image stages allow only float32 and bf16-mixed
    assert set(AcceleratorRegistry.available_accelerators()) <= set(runtime.ACCELERATORS)


def test_a_new_group_is_registered_with_one_line(make_cfg, monkeypatch):
    @dataclass
    class ToyConfig:
        size: int = 1

        def __post_init__(self) -> None:
            rules.positive_int(self, "size")

    monkeypatch.setitem(GROUPS, "toy", ToyConfig)  # the one line: GROUPS["toy"] = ToyConfig
    assert typing.get_type_hints(root_schema())["toy"] == typing.Optional[ToyConfig]
    with pytest.raises(ConfigError) as err:
        validate_config(make_cfg(["+toy.size=0"]))
    assert str(err.value) == "toy.size=0: must be a positive integer (e.g. toy.size=1)"
    assert validate_config(make_cfg(["+toy.size=3"]))["toy"] == ToyConfig(size=3)
    assert validate_config(make_cfg())["toy"] is None  # not selected: not checked


def test_check_node_checks_a_plain_dict_and_nested_keys():
    from advprior.config.stages import PriorConfig
    assert check_node({"n_components": 8, "bottleneck": 2}, PriorConfig, "prior").n_components == 8
    with pytest.raises(ConfigError, match=r"^prior\.ae\.epochs=0: must be a positive integer"):
        check_node({"ae": {"epochs": 0}}, PriorConfig, "prior")
    with pytest.raises(ConfigError, match=r"^prior\.n_components=x: Value 'x' of type 'str' could not be converted"):
        check_node({"n_components": "x"}, PriorConfig, "prior")


def test_config_error_is_a_value_error_and_kept_in_advprior_validation():
    assert advprior.validation.ConfigError is ConfigError and issubclass(ConfigError, ValueError)
    err = ConfigError.invalid("bottleneck", 8, "must be smaller than {n_components}=8", 2, fix="or raise {n_components}")
    assert str(err) == "bottleneck=8: must be smaller than n_components=8 (e.g. bottleneck=2); or raise n_components"
    assert str(err.at("prior")) == ("prior.bottleneck=8: must be smaller than prior.n_components=8 "
                                    "(e.g. prior.bottleneck=2); or raise prior.n_components")
    assert err.at("model.a").key == "model.a.bottleneck"


def test_the_config_group_registry_is_complete():
    """Every group directory of conf/ (but the overlays and hydra's own) has a schema."""
    overlays = {"experiment", "debug", "hydra", "local"}
    groups = {p.name for p in CONF.iterdir() if p.is_dir()} - overlays
    assert groups <= set(GROUPS), groups - set(GROUPS)
    assert [g for g in GROUPS if g in ("attack", "callbacks")] == ["attack", "callbacks"]  # sources before copies
    assert all(re.fullmatch(r"[a-z_]+", g) for g in GROUPS)
    assert {f.name for f in dataclasses.fields(root_schema())} >= set(GROUPS)
