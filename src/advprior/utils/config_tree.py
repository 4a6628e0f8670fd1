"""Render the resolved config as a rich tree (logged at start and saved in the run directory)."""
from __future__ import annotations

import io
from pathlib import Path

import rich.syntax
import rich.tree
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from .io import atomic_write


def config_tree_text(cfg: DictConfig, resolve: bool = True, width: int = 110) -> str:
    """The config as a tree of YAML blocks, one per top-level group, as plain text."""
    tree = rich.tree.Tree("CONFIG", guide_style="dim")
    for key, value in cfg.items():
        if key == "hydra":
            continue
        branch = tree.add(str(key))
        text = OmegaConf.to_yaml(value, resolve=resolve) if isinstance(value, (DictConfig,)) or OmegaConf.is_list(value) else str(value)
        branch.add(rich.syntax.Syntax(text, "yaml"))
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    console.print(tree)
    return console.file.getvalue()


def save_config_tree(cfg: DictConfig, path: str | Path) -> str:
    text = config_tree_text(cfg)
    atomic_write(path, lambda p: p.write_text(text))
    return text
