"""What an offline W&B run holds, read by wandb's own reader of its transaction log (``run-<id>.wandb``).

``wandb leet inspect --json PATH`` (wandb >= 0.31) prints every record of the log as one JSON object per line
and ``--summary --json`` the run's final state (summary, config); this module runs that command with the
current Python's wandb and gathers the records, so no private file format is parsed here. Nothing is
uploaded: ``wandb sync <offline-run dir>`` does that when you want it.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def _inspect(path: Path, *flags: str) -> str:
    cmd = [sys.executable, "-m", "wandb", "leet", "inspect", *flags, str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd[1:])}` failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}\n"
                           "Reading an offline run needs wandb >= 0.31 (`pip install -U wandb`).")
    return proc.stdout


def run_file(path: str | Path) -> Path:
    """The ``.wandb`` file of an offline-run directory (or ``path`` itself when it is one)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.wandb"))
        if not files:
            raise FileNotFoundError(f"no .wandb file in {path}: pass an offline-run-<date>-<id> directory")
        return files[0]
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return path


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Every record of the run's log, as wandb prints them (``{"num", "type", <type>: {...}}``)."""
    return [json.loads(line) for line in _inspect(run_file(path), "--json").splitlines() if line.strip()]


def read_offline_run(path: str | Path) -> dict[str, Any]:
    """An offline run (its directory or its ``.wandb`` file) as plain data:

    ``history``: the logged rows (``{key: value}``, media as flattened ``key._type``... fields), in order;
    ``summary``: the final summary (nested values as dicts); ``config``: the run's config;
    ``metrics``: the ``define_metric`` records (``name`` or ``glob_name``, ``step_metric``, ``options``);
    ``artifacts``: the logged artifacts (``name``, ``type``, ``files``: paths inside the artifact);
    ``files``: the run files recorded for upload; ``state``, ``exit_code``, ``group``: the run's state.
    """
    f = run_file(path)
    records = read_records(f)
    final = json.loads(_inspect(f, "--summary", "--json"))
    out: dict[str, Any] = {"history": [], "metrics": [], "artifacts": [], "files": [], "group": None,
                           "summary": final.get("summary") or {}, "config": final.get("config") or {},
                           "state": final.get("state"), "exit_code": final.get("exit_code")}
    for r in records:
        kind, body = r.get("type"), r.get(r.get("type"), {})
        if kind == "history":
            out["history"].append(body.get("item", {}))
        elif kind == "metric":
            out["metrics"].append(body)
        elif kind == "artifact":
            out["artifacts"].append({"name": body.get("name"), "type": body.get("type"),
                                     "files": [c["path"] for c in body.get("manifest", {}).get("contents", [])]})
        elif kind == "files":
            out["files"].extend(x["path"] for x in body.get("files", []))
        elif kind == "run":
            out["group"] = body.get("run_group") or body.get("group")
    return out
