"""advprior: reproduce and extend "Hitting Depth" (FGSM studies, fooling images, activation maps, a prior defense)."""
from __future__ import annotations

import os

from omegaconf import OmegaConf

# ``${advprior.abspath:PATH}``: PATH made absolute against the current directory. Registered on import so
# that paths resolve the same way in single runs and in multirun sweeps (where ``${hydra:runtime.cwd}`` is
# not yet set when Hydra resolves ``hydra.sweep.dir``).
OmegaConf.register_new_resolver(
    "advprior.abspath", lambda p=".": os.path.abspath(os.path.expanduser(str(p))), replace=True
)

from . import config as _config  # noqa: E402,F401  registers the config schemas in Hydra's ConfigStore
