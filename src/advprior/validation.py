"""Check a composed config before any work (the schemas and checks live in ``advprior.config``)."""
from __future__ import annotations

from .config import ConfigError, validate_config

__all__ = ["ConfigError", "validate_config"]
