"""Config composition for every group option, and validation before any work (more in test_validation.py)."""
from __future__ import annotations

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from advprior.validation import ConfigError, validate_config
from conftest import CONF


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["data", "trainer", "paths", "extras", "hydra", "experiment", "debug",
                                   "attack", "prior", "defense", "callbacks"])
def test_every_option_composes(make_cfg, group):
    # prior=paper asks for 128 components: more than the digits have images per class (validation says so)
    required = {"data/folder": ["data.root=/tmp/x"], "prior/paper": ["data=imagenet"]}
    for opt in options(group):
        if group == "hydra":
            continue  # hydra/default is part of every composition
        cfg = make_cfg([f"{group}={opt}", *required.get(f"{group}/{opt}", [])])
        OmegaConf.to_container(cfg, resolve=False)
        assert cfg.seed == 0
        validate_config(cfg)


@pytest.mark.parametrize("opt", options("model"))
def test_every_model_option_composes_and_builds_config(make_cfg, opt):
    cfg = make_cfg([f"model=[{opt}]"])
    assert list(cfg.model) == [opt]
    assert "_target_" in cfg.model[opt]
    validate_config(cfg)


@pytest.mark.parametrize("opt", options("logger"))
def test_every_logger_option_composes(make_cfg, opt):
    cfg = make_cfg([f"logger=[{opt}]"])
    assert list(cfg.logger) == [opt]
    validate_config(cfg)


def test_data_options_instantiate_digits(make_cfg):
    cfg = make_cfg()
    dm = instantiate(cfg.data)
    assert dm.num_classes == 10 and dm.input_shape == (1, 32, 32)


@pytest.mark.parametrize(
    "override, key",
    [
        ("seed=-1", "seed"),
        ("data.batch_size=-4", "data.batch_size"),
        ("data.eval_subset=0", "data.eval_subset"),
        ("model.vgg_small.dropout=1.5", "model.vgg_small.dropout"),
        ("model.shallow.hidden=-3", "model.shallow.hidden"),
        ("model.vgg_small.train.epochs=0", "model.vgg_small.train.epochs"),
        ("target_model=resnet", "target_model"),
        ("data.num_workers=-1", "data.num_workers"),
    ],
)
def test_invalid_values_name_the_key(make_cfg, override, key):
    cfg = make_cfg([override])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(cfg)


def test_seed_zero_is_valid(make_cfg):
    validate_config(make_cfg(["seed=0"]))


def test_unknown_group_option_fails_at_compose(make_cfg):
    from hydra.errors import MissingConfigException
    with pytest.raises(MissingConfigException):
        make_cfg(["data=nonexistent"])


def test_missing_required_path_is_reported(make_cfg):
    from omegaconf.errors import MissingMandatoryValue
    cfg = make_cfg(["data=folder"])
    with pytest.raises(MissingMandatoryValue, match="root"):
        instantiate(cfg.data)


def test_experiment_overlays(make_cfg):
    cfg = make_cfg(["experiment=depth_vs_shallow"])
    assert list(cfg.model) == ["vgg_small", "shallow_hidden", "shallow"]
    assert cfg.task_name == "depth_vs_shallow"
    cfg = make_cfg(["experiment=dropout"])
    assert cfg.model.vgg_small.dropout == 0.5 and cfg.model.vgg_small_nodropout.dropout == 0.0
    assert cfg.model.vgg_small_nodropout.widths == cfg.model.vgg_small.widths


def test_schema_option_lists_equal_the_libraries_own():
    from advprior.attacks.losses import LOSSES
    from advprior.attacks.pgd import SCHEDULES
    from advprior.config import stages
    from advprior.prior.class_prior import SPACES

    assert (set(stages.LOSSES), tuple(stages.SCHEDULES), tuple(stages.SPACES)) == (set(LOSSES), tuple(SCHEDULES),
                                                                                  tuple(SPACES))
