"""A quiet terminal: library chatter silenced where it comes from, and a console that shows our stage lines.

- ``LIBRARY_LOGGERS``: library loggers raised to WARNING (their INFO lines are advertising or restate the
  config: Lightning's "GPU available", "TPU available", the "💡 Tip ... litlogger" line, "Trainer.fit stopped").
- ``KNOWN_WARNINGS``: specific warnings raised inside a library, about the library's own code, that no
  setting of ours can avoid; each is ignored by message, category and the module it is attributed to.
- ``ConsoleFilter`` (installed on the console handler by ``conf/hydra/default.yaml``): the console shows
  INFO records of ``CONSOLE_LOGGERS`` only (run directory, processes, stage start and end, the closing summary) and
  every WARNING or ERROR from anyone; ``run.log`` keeps every INFO line.
"""
from __future__ import annotations

import logging
import warnings

LIBRARY_LOGGERS = (
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "pytorch_lightning.accelerators.cuda",   # "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [0]"
    "lightning_fabric.accelerators.cuda",
)

# (message regex, category, module regex, why it cannot be fixed on our side)
KNOWN_WARNINGS: tuple[tuple[str, type[Warning], str, str], ...] = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"pytorch_lightning\.utilities\._pytree",
     "torch >= 2.10 deprecates LeafSpec; pytorch_lightning 2.6's own _pytree helper still constructs it"),
)

CONSOLE_LOGGERS = ("advprior", "advprior.pipeline", "advprior.distributed")  # distributed: processes, GPUs


def quiet_libraries() -> None:
    """Raise the chatty library loggers to WARNING and ignore ``KNOWN_WARNINGS`` (idempotent)."""
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for message, category, module, _why in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


class ConsoleFilter(logging.Filter):
    """Pass WARNING and above from every logger, INFO only from ``CONSOLE_LOGGERS``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name in CONSOLE_LOGGERS
