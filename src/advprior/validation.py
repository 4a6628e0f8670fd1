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
    if cfg.get("fooling") is not None:  # the fooling stage runs late: check its settings now
        from .fooling.config import FoolingConfig
        fooling = FoolingConfig.from_node(cfg.fooling)
        if cfg.get("stages") is None or "fooling" in cfg.stages:
            fooling.check_models(cfg.model)
