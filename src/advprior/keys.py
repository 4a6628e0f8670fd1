"""What each stage's store key depends on, declared once per stage, and the key built from that declaration.

A ``KeySpec`` classifies every leaf of the composed config (dotted paths, e.g. ``attack.epsilons``) by
ordered ``(pattern, kind)`` rules, first match wins (``fnmatch`` patterns; ``{model}`` is the model a
per-model key is for):

- ``AFFECTS``: the stage's result can change with it; its resolved value is in the key.
- ``IGNORED``: it cannot change the stored result (summaries, figures, logging, loading speed); never in
  the key. Settings that only change a summary are recomputed from stored columns instead.
- ``CONTENT``: it acts only through what it points to (the data served, the weights loaded); the key holds
  that content's identity (``KeySpec.content``), not the setting: a folder edited in place, a
  checkpoint overwritten changes the key; a moved copy of the same weights does not.

A leaf no rule matches counts as ``AFFECTS`` at run time (never a stale result) and fails
``tests/test_keys.py``, so a new config key must be classified. The key also holds the keys of the
stage's ``inputs`` (e.g. the defense holds the prior's key, which holds the features' key, which holds the
target model's identity) and ``identity.code_version`` of the stage's declared source files.

Adding a stage: declare ``SPEC = register(KeySpec(...))`` next to its ``run`` (stage name, rules, code,
inputs, content) and use ``stage_key(ctx, SPEC)`` as its key; ``tests/test_keys.py`` checks every
registered spec (import the stage module in ``pipeline.STAGES``).
"""
from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from .identity import code_version

AFFECTS, IGNORED, CONTENT = "affects", "ignored", "content"
KINDS = (AFFECTS, IGNORED, CONTENT)

Rule = tuple[str, str]

# Settings that never change a stored result, whatever the stage.
COMMON: tuple[Rule, ...] = (
    ("task_name", IGNORED), ("stages", IGNORED), ("optimized_metric", IGNORED), ("wandb_group", IGNORED),
    ("logger.*", IGNORED), ("paths.*", IGNORED), ("extras.*", IGNORED), ("hydra.*", IGNORED),
    ("callbacks.*", IGNORED),  # the FGSM eval callback reads the model while it trains, never changes it
    ("compute.timeout_minutes", IGNORED), ("compute.gpus_per_job", IGNORED),  # waiting and scheduling
)

# Trainer arguments that change what it shows or saves, never what it computes.
TRAINER_OUTPUT = ("log_every_n_steps", "enable_progress_bar", "enable_model_summary", "enable_checkpointing",
                  "default_root_dir", "logger", "profiler", "barebones")
# Trainer arguments of validation during fit (no stage stores validation results).
TRAINER_VALIDATION = ("limit_val_batches", "num_sanity_val_steps", "val_check_interval", "check_val_every_n_epoch")
# Trainer arguments that only act in fit (for the stages that evaluate through a Trainer).
TRAINER_FIT = ("max_epochs", "min_epochs", "max_steps", "min_steps", "max_time", "limit_train_batches",
               "accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm", "sync_batchnorm",
               "reload_dataloaders_every_n_epochs") + TRAINER_VALIDATION

# DataModule arguments (digits, folder, imagenet) that choose WHAT is served: they act through the
# DataModule's identity of the served files/arrays (``DataModule.identity``).
DATA_CONTENT = ("_target_", "root", "devkit", "val_dir", "image_size", "resize_size", "channels", "val_fraction",
                "test_fraction", "seed", "eval_subset", "val_subset", "support_per_class", "support_selection",
                "check")
# DataModule arguments that only change HOW it is served: speed, failing or skipping on a bad file, and the
# batch size (evaluation results are per image; training declares it as affecting).
DATA_LOADING = ("num_workers", "pin_memory", "on_bad_image", "batch_size", "eval_batch_size", "check_cache_dir")


def not_read(*groups: str) -> tuple[Rule, ...]:
    """Rules for whole config groups of other stages that this stage never reads."""
    return tuple((f"{g}.*", IGNORED) for g in groups)


def data_rules(affects: tuple[str, ...] = (), content: str = CONTENT) -> tuple[Rule, ...]:
    """Rules for every ``data.*`` argument: ``affects`` names the stage-specific ones (e.g. the batch size
    for training); loading arguments are ignored; content arguments get ``content`` (``IGNORED`` for a stage
    that reads no data itself)."""
    rules = [(f"data.{k}", AFFECTS) for k in affects]
    rules += [(f"data.{k}", IGNORED) for k in DATA_LOADING if k not in affects]
    rules += [(f"data.{k}", content) for k in DATA_CONTENT if k not in affects]
    return tuple(rules)


@dataclass(frozen=True)
class KeySpec:
    """One stage's key declaration.

    stage: the store's stage name. rules: ordered ``(pattern, kind)``. code: source files/folders (relative
    to ``src/advprior``) its results depend on. inputs: the other keys its key holds: ``"models"`` (every
    model's identity), ``"target_model"`` (the target model's) or another spec's stage name (its key).
    content: ``(ctx, model) -> JSON-able`` identity of the data/weights it reads (None: none).
    per_model: one key per model (``{model}`` in the rules).
    """

    stage: str
    rules: tuple[Rule, ...]
    code: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    content: Callable[[Any, str | None], Any] | None = None
    per_model: bool = False
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        bad = [r for r in self.rules if len(r) != 2 or r[1] not in KINDS]
        if bad:
            raise ValueError(f"KeySpec {self.stage}: rules must be (pattern, one of {KINDS}); got {bad}")

    def classify(self, leaf: str, model: str | None = None) -> str | None:
        """The kind of config leaf ``leaf`` for this stage (None: unclassified)."""
        memo = self._memo.get((leaf, model), False)
        if memo is not False:
            return memo
        kind = None
        for pattern, k in self.rules:
            if "{model}" in pattern:
                if model is None:
                    continue
                pattern = pattern.replace("{model}", model)
            # an empty mapping (e.g. ``callbacks`` with callbacks=none) is a leaf matching its subtree's rules
            rx = _compiled(pattern)
            if rx.match(leaf) or rx.match(f"{leaf}."):
                kind = k
                break
        self._memo[(leaf, model)] = kind
        return kind


@functools.lru_cache(maxsize=None)
def _compiled(pattern: str) -> re.Pattern:
    return re.compile(fnmatch.translate(pattern))


SPECS: dict[str, KeySpec] = {}


def register(spec: KeySpec) -> KeySpec:
    """Add ``spec`` to ``SPECS`` (the sensitivity test walks them all); returns it."""
    SPECS[spec.stage] = spec
    return spec


def config_leaves(cfg: DictConfig, prefix: str = "") -> Iterator[str]:
    """Dotted paths of every leaf of ``cfg`` (lists and empty mappings are leaves), without ``hydra``."""
    for k in cfg.keys():
        path = f"{prefix}{k}"
        if path == "hydra":
            continue
        node = cfg._get_node(k)
        if isinstance(node, DictConfig) and not node._is_none() and not node._is_missing() and len(node):
            yield from config_leaves(node, f"{path}.")
        else:
            yield path


def leaf_value(cfg: DictConfig, path: str) -> Any:
    """The resolved value of leaf ``path`` (containers as plain lists/dicts)."""
    v = OmegaConf.select(cfg, path, throw_on_missing=True)
    if isinstance(v, (DictConfig, ListConfig)):
        return OmegaConf.to_container(v, resolve=True)
    return v


def config_payload(cfg: DictConfig, spec: KeySpec, model: str | None = None) -> dict[str, Any]:
    """``{leaf: value}`` of the leaves that affect ``spec``'s result (and of any unclassified leaf)."""
    return {leaf: leaf_value(cfg, leaf) for leaf in config_leaves(cfg)
            if spec.classify(leaf, model) in (AFFECTS, None)}


def stage_key(ctx: Any, spec: KeySpec, model: str | None = None, extra: Any = None) -> str:
    """The store key of ``spec``'s artifact (for ``model`` if per model): its affecting config, the keys of
    its inputs, its content identity and its code version; ``extra``: a JSON-able value decided at run time
    that the result also depends on (e.g. which images were chosen from an earlier stage's table)."""
    payload = {"config": config_payload(ctx.cfg, spec, model), "code": code_version(spec.code),
               "inputs": {name: input_key(ctx, name, model) for name in spec.inputs}}
    if spec.content is not None:
        payload["content"] = spec.content(ctx, model)
    if extra is not None:
        payload["extra"] = extra
    return ctx.store.key(spec.stage, payload)


def model_spec(cfg: DictConfig, name: str) -> KeySpec:
    """The spec of model ``name``'s identity: ``train`` when it is trained here, else ``pretrained``."""
    return SPECS["train"] if cfg.model[name].get("train") is not None else SPECS["pretrained"]


def model_key(ctx: Any, name: str) -> str:
    """The identity of model ``name``'s weights (its training key, or its config and weight file's hash)."""
    return stage_key(ctx, model_spec(ctx.cfg, name), model=name)


def input_key(ctx: Any, name: str, model: str | None = None) -> Any:
    """An input's key: ``"models"`` (every model's identity), ``"target_model"``, ``"model"`` (the identity
    of the model a per-model key is for), or another stage's key."""
    if name == "model":
        if model is None:
            raise ValueError("the input 'model' needs a per-model KeySpec (a key for one model)")
        return model_key(ctx, model)
    if name == "models":
        return {n: model_key(ctx, n) for n in ctx.cfg.model}
    if name == "target_model":
        return model_key(ctx, ctx.target_model)
    return stage_key(ctx, SPECS[name])
