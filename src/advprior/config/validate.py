"""``validate_config``: every group of a composed config checked against its schema, then the checks across
groups, before any data is read, model built or trained.

Each group node is resolved, merged into its schema (types, unknown keys) and converted to the schema's
dataclass, which runs its ``__post_init__`` checks; nested schemas are converted first so that an error names
its own key. Every failure is a ``ConfigError`` naming the full key, the bad value, what is allowed and a fix.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from typing import Any, Callable

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException, ValidationError

from .errors import ConfigError, fmt
from .groups import GROUPS, EntriesOf, OneOf
from .root import RootConfig

_SIMPLE_INTERPOLATION = re.compile(r"^\$\{(\.*)([A-Za-z_][\w.]*)\}$")


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


# ----------------------------------------------------------------------------- one node against a schema
def check_node(node: Any, schema: type, path: str) -> Any:
    """The composed ``node`` at ``path`` checked against ``schema``; returns the schema's dataclass object."""
    if isinstance(node, (DictConfig, ListConfig)):
        try:
            data = OmegaConf.to_container(node, resolve=True, throw_on_missing=False)
        except OmegaConfBaseException as e:
            raise ConfigError(f"{_join(path, e.full_key)}: cannot be resolved: {_first_line(e)}",
                              key=_join(path, e.full_key)) from None
    else:
        data = node
    if not isinstance(data, dict):
        raise ConfigError.invalid(path, data, f"must be a config node with the keys of {schema.__name__} "
                                  f"({', '.join(_field_names(schema))})")
    try:
        typed = OmegaConf.merge(OmegaConf.structured(schema), _without_open_extras(schema, data))
    except ConfigKeyError as e:
        raise _unknown_key(e, path, data) from None
    except ValidationError as e:
        raise _wrong_type(e, path) from None
    return _to_object(typed, path, node if isinstance(node, DictConfig) else None)


def _to_object(typed: DictConfig, path: str, source: DictConfig | None) -> Any:
    """Nested schema nodes first (their errors name their own keys), then this one."""
    for key in typed:
        child = typed._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing() \
                and dataclasses.is_dataclass(OmegaConf.get_type(child)):
            sub = OmegaConf.select(source, str(key), throw_on_missing=False) if source is not None else None
            _to_object(child, _join(path, key), sub if isinstance(sub, DictConfig) else None)
    try:
        return OmegaConf.to_object(typed)
    except ConfigError as e:
        raise e.at(path, blame=_interpolation_source(source, e, path)) from None
    except MissingMandatoryValue as e:
        raise _missing(e, path) from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{_join(path, e.full_key)}: {_first_line(e)}", key=_join(path, e.full_key)) from None
    except (ValueError, TypeError) as e:  # a schema that raised a plain error
        raise ConfigError(f"{path or 'config'}: {e}", key=path) from None


def _interpolation_source(source: DictConfig | None, err: ConfigError, path: str) -> str | None:
    """The full key a bad value was copied from (``${attack.epsilons}``, or relative to ``path``, the node
    holding it: ``${..loss}``), so that the copy is not blamed."""
    key = err.key
    if source is None or not key or key not in source or not OmegaConf.is_interpolation(source, key):
        return None
    m = _SIMPLE_INTERPOLATION.match(str(source._get_node(key)._value()))
    if not m:
        return None
    dots, ref = m.groups()
    if not dots:
        return ref
    parts = path.split(".") if path else []
    up = len(dots) - 1  # "." is the node itself, each further dot its parent
    return ".".join(parts[:len(parts) - up] + [ref]) if up <= len(parts) else None


def _without_open_extras(schema: type, data: dict) -> dict:
    """``data`` minus the keys an open schema does not declare (they pass through to the target unchecked),
    recursively through nested schemas."""
    names = _field_names(schema)
    hints = typing.get_type_hints(schema)
    out = {}
    for k, v in data.items():
        if k not in names:
            if getattr(schema, "open_keys", False):
                continue
        else:
            sub = _dataclass_in(hints[k])
            if sub is not None and isinstance(v, dict):
                v = _without_open_extras(sub, v)
        out[k] = v
    return out


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass in a field type (``X`` or ``Optional[X]``), else None."""
    for t in (tp, *typing.get_args(tp)):
        if isinstance(t, type) and dataclasses.is_dataclass(t):
            return t
    return None


def _field_names(schema: type) -> list[str]:
    return [f.name for f in dataclasses.fields(schema)]


def _first_line(e: Exception) -> str:
    return str(getattr(e, "msg", e)).strip().splitlines()[0]


def _value_at(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _unknown_key(e: ConfigKeyError, path: str, data: dict) -> ConfigError:
    full = _join(path, e.full_key)
    schema = e.object_type if dataclasses.is_dataclass(e.object_type) else None
    known = _field_names(schema) if schema else []
    close = difflib.get_close_matches(str(e.key), known, n=1)
    parent = full.rsplit(".", 1)[0] if "." in full else ""
    hint = f"did you mean {_join(parent, close[0])}?" if close else f"the keys are: {', '.join(known)}"
    return ConfigError.invalid(full, _value_at(data, str(e.full_key)), "unknown key", fix=hint)


def _wrong_type(e: ValidationError, path: str) -> ConfigError:
    full = _join(path, e.full_key)
    return ConfigError(f"{full}={fmt(getattr(e, 'value', None))}: {_first_line(e)}", key=full)


def _missing(e: MissingMandatoryValue, path: str) -> ConfigError:
    """A required value left at ``???``; the example comes from the field's ``metadata={"example": ...}``."""
    full = _join(path, e.full_key)
    schema = e.object_type if dataclasses.is_dataclass(e.object_type) else None
    meta = next((f.metadata for f in dataclasses.fields(schema) if f.name == e.key), {}) if schema else {}
    return ConfigError.invalid(full, "???", f"a value is required{': ' + meta['help'] if 'help' in meta else ''}",
                               meta.get("example", "..."))


# ----------------------------------------------------------------------------- groups
def check_group(cfg: DictConfig, name: str, spec: Any) -> Any:
    """Group ``name`` checked by its ``GROUPS`` entry: a schema object, or {entry name: object} for EntriesOf.
    An absent group (not selected) is not checked."""
    node = cfg.get(name)
    if node is None:
        return None
    if isinstance(spec, EntriesOf):
        if not isinstance(node, DictConfig):
            raise ConfigError.invalid(name, node, "must be a dict of name -> config with a _target_")
        out = {}
        for entry, sub in node.items_ex(resolve=False):
            path = f"{name}.{entry}"
            if sub is None:  # switched off (``logger.wandb=null``); check_models refuses an empty model
                out[entry] = None
                continue
            target = sub.get("_target_") if isinstance(sub, DictConfig) else None
            if target is None:
                raise ConfigError.invalid(path, sub, f"must be a config with a _target_; pick one from conf/{name}/")
            out[entry] = check_node(sub, spec.schema_for(target), path)
        return out
    if isinstance(spec, OneOf):
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        return check_node(node, spec.schema_for(target), name)
    return check_node(node, spec, name)


# ----------------------------------------------------------------------------- checks across groups
def _will_run(cfg: DictConfig, stage: str) -> bool:
    stages = cfg.get("stages")
    return not stages or stage in stages


def check_models(cfg: DictConfig, checked: dict) -> None:
    models = checked.get("model") or {}
    if not models:
        raise ConfigError.invalid("model", {}, "choose at least one model", ["vgg_small"],
                                  fix="or model=[vgg19] on ImageNet")
    for name, m in models.items():
        if m is None:
            raise ConfigError.invalid(f"model.{name}", None, "must be a model config; drop the entry from model=[...] "
                                      "instead")
    target = cfg.get("target_model")
    if target is not None and target not in models:
        raise ConfigError.invalid("target_model", target, f"must be one of the configured models "
                                  f"{', '.join(models)} (or null: the first)", next(iter(models)))


def check_image_size(cfg: DictConfig, checked: dict) -> None:
    """A VGG-style net halves the image once per block: the data's image size must survive that."""
    size = getattr(checked.get("data"), "image_size", None)
    for name, m in (checked.get("model") or {}).items():
        widths = getattr(m, "widths", None)
        if size is not None and widths and size % 2 ** len(widths):
            need = 2 ** len(widths)
            raise ConfigError.invalid("data.image_size", size, f"must be divisible by {need}: model.{name} has "
                                      f"{len(widths)} pooling blocks", max(need, size - size % need),
                                      fix=f"or change model.{name}.widths")


def check_stages(cfg: DictConfig, checked: dict) -> None:
    stages = cfg.get("stages")
    if not stages:
        return
    from ..pipeline import STAGES  # imports torch and Lightning: after every cheap check
    for s in stages:
        if s not in STAGES:
            close = difflib.get_close_matches(str(s), list(STAGES), n=1)
            raise ConfigError.invalid("stages", list(stages), f"{s} is not a stage; the stages are "
                                      f"{', '.join(STAGES)} (null: all)", [close[0]] if close else ["train"])


def support_counts(cfg: DictConfig, per_class: int | None) -> list[int] | None:
    """Support images per class of the prior, from a data module whose splits are cheap to compute (its schema
    says ``cheap_splits = True``: builds it, no image file is read); None for the others."""
    if not getattr(GROUPS["data"].schema_for(cfg.data.get("_target_")), "cheap_splits", False):
        return None
    from hydra.utils import instantiate
    dm = instantiate(cfg.data)
    ds = dm.support_dataset(per_class)
    labels = [int(y) for y in ds.labels] if hasattr(ds, "labels") else [int(s[1]) for s in ds]
    return [labels.count(c) for c in range(dm.num_classes)]


def check_prior_support(cfg: DictConfig, checked: dict) -> None:
    """Per-class PCA to ``n_components`` needs more support images per class than that; ``cv`` needs as many
    as ``cv_folds``. The support size comes from the config, or from cheap data splits (digits)."""
    prior = checked.get("prior")
    if prior is None or not (_will_run(cfg, "prior") or _will_run(cfg, "defense")):
        return
    per_class = prior.support_per_class
    source = "prior.support_per_class"
    if per_class is None:
        per_class = getattr(checked.get("data"), "support_per_class", None)
        source = "data.support_per_class"
    counts = support_counts(cfg, per_class)
    if counts is not None:
        smallest = min(counts)
        where = (f"the smallest class has {smallest} support images"
                 + (f" with {source}={per_class}" if per_class is not None else " (the whole training split)"))
    elif per_class is not None:
        smallest, where = per_class, f"{source}={per_class}"
    else:
        return  # known only once the data is read; ClassPCA checks it then
    if prior.n_components >= smallest:
        raise ConfigError.invalid("prior.n_components", prior.n_components,
                                  f"must be below the support images per class: {where}",
                                  max(1, min(smallest - 1, 32)),
                                  fix=f"or give more support images per class ({source})")
    if prior.bandwidth == "cv" and prior.cv_folds > smallest:
        raise ConfigError.invalid("prior.cv_folds", prior.cv_folds, f"must be at most the support images per "
                                  f"class: {where}", min(5, smallest))


def check_fooling_models(cfg: DictConfig, checked: dict) -> None:
    """The fooling stage's sources and targets are configured models (when that stage runs)."""
    fooling = checked.get("fooling")
    if fooling is None or not _will_run(cfg, "fooling"):
        return
    models = list(checked.get("model") or {})
    for key in ("sources", "targets"):
        missing = [m for m in (getattr(fooling, key) or []) if m not in models]
        if missing:
            raise ConfigError.invalid(f"fooling.{key}", getattr(fooling, key), f"names {', '.join(missing)}, not "
                                      f"among the configured models {', '.join(models)}", fix=f"add them to "
                                      f"model=[...] or set fooling.{key}=null (every model)")


def check_activations_eps(cfg: DictConfig, checked: dict) -> None:
    """The activations stage reuses the study's adversarial images: its eps values must be the study's."""
    acts, attack = checked.get("activations"), checked.get("attack")
    if acts is None or attack is None or not _will_run(cfg, "activations"):
        return
    study = [e / attack.scale for e in attack.epsilons]

    def known(e: float) -> bool:
        return any(abs(e / attack.scale - s) < 1e-12 for s in study)

    bad = [e for e in acts.epsilons or () if not known(e)]
    if bad:
        raise ConfigError.invalid("activations.epsilons", list(acts.epsilons), f"{fmt(bad[0])} is not one of "
                                  f"attack.epsilons={fmt(list(attack.epsilons))}", fix="the stage reuses the "
                                  "study's adversarial images; pick from attack.epsilons or use null (all)")
    fig = acts.figure_eps
    if fig is not None and acts.examples_per_category and acts.layers and not (
            known(fig) and (acts.epsilons is None or any(abs(fig - e) < 1e-12 for e in acts.epsilons))):
        raise ConfigError.invalid("activations.figure_eps", fig, "must be one of activations.epsilons (null: all "
                                  "of attack.epsilons)", fix="or set activations.figure_eps=null (attack.figure_eps)")


def check_pgd_step(cfg: DictConfig, checked: dict) -> None:
    """The adaptive PGD's first step ``alpha_factor * eps`` stays within one pixel unit at the largest eps."""
    defense, attack = checked.get("defense"), checked.get("attack")
    if defense is None or attack is None or not _will_run(cfg, "defense") or not defense.adaptive.pgd.steps:
        return
    factor, eps_max = defense.adaptive.pgd.alpha_factor, max(attack.epsilons) / attack.scale
    if factor * eps_max > 1:
        raise ConfigError.invalid("defense.adaptive.pgd.alpha_factor", factor, f"makes the PGD step alpha_factor * "
                                  f"eps = {factor * eps_max:.4g} > 1 pixel unit at eps={fmt(max(attack.epsilons))}",
                                  round(0.5 / eps_max, 3))


CROSS_CHECKS: list[Callable[[DictConfig, dict], None]] = [
    check_models, check_image_size, check_stages, check_fooling_models, check_activations_eps, check_pgd_step,
    check_prior_support,  # last: it may build the digits split (in memory) to count the support images
]


def validate_config(cfg: DictConfig) -> dict[str, Any]:
    """Raise ``ConfigError`` for the first invalid value of ``cfg`` (a composed config); returns the checked
    objects: ``{"": RootConfig, group: schema object | {entry: object}}``."""
    root = {f.name: cfg.get(f.name) for f in dataclasses.fields(RootConfig)}
    checked: dict[str, Any] = {"": check_node(root, RootConfig, "")}
    for name, spec in GROUPS.items():
        checked[name] = check_group(cfg, name, spec)
    for check in CROSS_CHECKS:
        check(cfg, checked)
    return checked
