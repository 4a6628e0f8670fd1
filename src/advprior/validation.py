"""Check a composed config before any work, with messages naming the key and what is allowed."""
from __future__ import annotations

from omegaconf import DictConfig


class ConfigError(ValueError):
    """An invalid configuration value."""


def _positive(cfg: DictConfig, dotted: str, allow_none: bool = False) -> None:
    node: object = cfg
    for part in dotted.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return
        node = node[part]
    if node is None and allow_none:
        return
    if not isinstance(node, (int, float)) or isinstance(node, bool) or node <= 0:
        raise ConfigError(f"{dotted} must be a positive number, got {node!r}")


def validate_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` for values that would fail (or silently mislead) later in the run."""
    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer (0 is valid), got {seed!r}")
    if not cfg.get("model"):
        raise ConfigError("model is empty: choose at least one, e.g. model=[vgg_small] or model=[vgg19]")
    target = cfg.get("target_model")
    if target is not None and target not in cfg.model:
        raise ConfigError(f"target_model={target!r} is not one of the configured models {list(cfg.model)}")
    for key in ("batch_size", "eval_batch_size", "image_size", "support_per_class", "eval_subset", "val_subset"):
        _positive(cfg, f"data.{key}", allow_none=True)
    if cfg.data.get("num_workers", 0) < 0:
        raise ConfigError(f"data.num_workers must be >= 0, got {cfg.data.num_workers}")
    _check_prior_and_defense(cfg)
    for name, m in cfg.model.items():
        if m is None or "_target_" not in m:
            raise ConfigError(f"model.{name} has no _target_; pick a model config from conf/model/")
        if m.get("train") is not None:
            _positive(cfg, f"model.{name}.train.epochs")
            _positive(cfg, f"model.{name}.train.optimizer.lr")
        for key in ("hidden", "dropout"):
            v = m.get(key)
            if key == "dropout" and v is not None and not 0 <= v < 1:
                raise ConfigError(f"model.{name}.dropout must be in [0, 1), got {v}")
            if key == "hidden" and v is not None and v < 0:
                raise ConfigError(f"model.{name}.hidden must be >= 0, got {v}")


def _check_prior_and_defense(cfg: DictConfig) -> None:
    """The prior's and the defense's options (their checks live beside the code that uses them)."""
    from .stages.attack_study import epsilons
    from .stages.defense import check_adaptive_config
    from .stages.prior_fit import check_prior_config

    if cfg.get("prior") is not None:
        check_prior_config(cfg.prior)
    if cfg.get("defense") is not None and cfg.get("attack") is not None:
        check_adaptive_config(cfg.defense.adaptive, max(epsilons(cfg), default=0.0))
