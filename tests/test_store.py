"""The artifact store: checksummed manifests verified on read, corruption recomputed (never served),
verification hashed once per process, per-artifact locks between concurrent runs."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from advprior import identity
from advprior.analysis.outcomes import read_outcomes
from advprior.cli import run_task
from advprior.store import MANIFEST, ArtifactStore
from conftest import ROOT
from tiny_pipeline import TINY, zero_bytes


def _commit(store: ArtifactStore, data: bytes = b"x" * 4096, meta: dict | None = None) -> Path:
    with store.claim("stage", "k1") as art:
        assert not art.done
        (art.dir / "sub").mkdir()
        (art.dir / "sub" / "a.bin").write_bytes(data)
        art.commit(meta or {"n": 1})
    return art.dir


def test_manifest_records_checksums_and_a_claim_reuses_them(tmp_path):
    store = ArtifactStore(tmp_path)
    d = _commit(store, meta={"acc": 0.5})
    manifest = json.loads((d / MANIFEST).read_text())
    assert manifest["files"]["sub/a.bin"] == {"size": 4096, "sha256": hashlib.sha256(b"x" * 4096).hexdigest()}
    with store.claim("stage", "k1") as art:
        assert art.done and art.meta == {"acc": 0.5} and (art.dir / "sub" / "a.bin").read_bytes() == b"x" * 4096


def test_same_size_corruption_is_named_and_discarded_never_served(tmp_path, caplog):
    store = ArtifactStore(tmp_path)
    d = _commit(store)
    zero_bytes(d / "sub" / "a.bin")  # same size, same modification time
    with caplog.at_level(logging.WARNING, logger="advprior.store"):
        with store.claim("stage", "k1") as art:
            assert not art.done and art.meta == {}
            assert not (art.dir / "sub").exists()  # the whole suspect directory was discarded
            (art.dir / "a.bin").write_bytes(b"fresh")
            art.commit()
    assert str(d / "sub" / "a.bin") in caplog.text and "corrupted" in caplog.text
    assert store.is_done("stage", "k1")


def test_a_missing_file_or_a_foreign_manifest_means_recompute(tmp_path, caplog):
    store = ArtifactStore(tmp_path)
    d = _commit(store)
    (d / "sub" / "a.bin").unlink()
    assert store.verify("stage", "k1") == "corrupt"
    d = _commit(store)
    (d / MANIFEST).write_text(json.dumps({"files": {"sub/a.bin": 4096}, "meta": {}}))  # sizes only: older format
    with caplog.at_level(logging.WARNING):
        assert not store.is_done("stage", "k1")
    assert "older advprior" in caplog.text


def test_verification_hashes_each_file_version_once_per_process(tmp_path, monkeypatch):
    calls: list[str] = []
    real = identity._hash_file
    monkeypatch.setattr(identity, "_hash_file", lambda p: calls.append(p) or real(p))
    store = ArtifactStore(tmp_path)
    _commit(store)
    assert len(calls) == 1  # the commit
    for _ in range(3):
        assert store.is_done("stage", "k1")
    assert len(calls) == 1  # verified from the memo: (realpath, inode, size, mtime_ns, ctime_ns) unchanged
    identity._digests.clear()  # a new process
    assert store.is_done("stage", "k1") and len(calls) == 2


def test_an_uncommitted_claim_warns_and_stays_unfinished(tmp_path, caplog):
    store = ArtifactStore(tmp_path)
    with caplog.at_level(logging.WARNING):
        with store.claim("stage", "k2") as art:
            (art.dir / "shard_0.pt").write_bytes(b"partial")
    assert "not committed" in caplog.text
    with store.claim("stage", "k2") as art:  # a later run resumes next to the partial work
        assert not art.done and (art.dir / "shard_0.pt").read_bytes() == b"partial"
        art.commit()


WORKER = textwrap.dedent("""
    import sys, time
    from advprior.store import ArtifactStore
    import logging; logging.basicConfig(level=logging.INFO)
    store = ArtifactStore(sys.argv[1])
    with store.claim("stage", "k") as art:
        if art.done:
            print("reused", (art.dir / "out.txt").read_text())
        else:
            (art.dir / "out.txt").write_text(sys.argv[2])
            time.sleep(2.0)  # hold the lock while the other process arrives
            art.commit()
            print("computed", sys.argv[2])
""")


def test_two_processes_on_one_artifact_one_computes_the_other_waits_and_reuses(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), name], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name in ("A", "B")]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    lines = sorted(o[0].strip() for o in outs)
    winner = [ln.split()[1] for ln in lines if ln.startswith("computed")]
    assert len(winner) == 1 and lines == sorted([f"computed {winner[0]}", f"reused {winner[0]}"])
    assert any("waiting" in o[1] for o in outs)  # the second one said why it waited


@pytest.mark.slow  # two full interpreters with torch and Lightning: ~20 s alone, minutes on a loaded host
def test_two_identical_runs_started_together_both_finish_and_share_one_result(tmp_path):
    """Two real `python -m advprior` processes on one store: no crash; each artifact computed once."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "ADVPRIOR_ROOT": str(tmp_path)}
    args = ["debug=fast", "logger=[csv]", "stages=[attack]", "model=[shallow]", "data.eval_subset=48",
            "attack.shard_size=16", "attack.epsilons=[4,8]", "attack.figure_eps=4", "attack.n_boot=20",
            "callbacks=none"]
    procs = [subprocess.Popen([sys.executable, "-m", "advprior", *args, f"hydra.run.dir={tmp_path / name}"],
                              env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for name in ("a", "b")]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-3000:] for o in outs]
    logs = "".join((tmp_path / name / "run.log").read_text() for name in ("a", "b"))
    assert logs.count("reusing trained weights") == 1 and logs.count("reusing outcomes") == 1
    tables = [read_outcomes(tmp_path / name / "attack" / "outcomes.parquet") for name in ("a", "b")]
    pd.testing.assert_frame_equal(*tables)


@pytest.fixture(scope="module")
def pipeline_store(tmp_path_factory):
    """One tiny run of every stage; returns (root, metrics, the store's artifact files)."""
    from conftest import compose_cfg
    root = tmp_path_factory.mktemp("corrupt")
    cfg = compose_cfg(root, TINY + ["stages=[attack,defense]"])
    metrics = run_task(cfg)
    store = Path(cfg.paths.store_dir)
    files = {name: next(store.glob(f"{stage}/*/{name}")) for stage, name in
             (("train", "model.pt"), ("attack", "outcomes.parquet"), ("features", "features.pt"),
              ("prior", "prior.pt"))}
    return root, metrics, files


@pytest.mark.parametrize("name, stages, extra", [
    ("model.pt", "[train]", []),
    ("outcomes.parquet", "[attack]", []),
    ("prior.pt", "[prior]", []),
    # the prior is done, so nothing reads the features; another bandwidth needs them again
    ("features.pt", "[prior]", ["prior.bandwidth=silverman"]),
])
def test_zeroed_artifact_is_detected_named_and_recomputed(pipeline_store, make_cfg, caplog, name, stages, extra):
    root, metrics, files = pipeline_store
    path = files[name]
    original = root / f"original_{name}"
    original.write_bytes(path.read_bytes())
    zero_bytes(path)
    cfg = make_cfg(TINY + [f"stages={stages}", f"paths.store_dir={root / 'logs' / 'store'}", *extra],
                   sub=f"again_{name}")
    with caplog.at_level(logging.WARNING, logger="advprior.store"):
        again = run_task(cfg)
    assert f"artifact file {path} is corrupted" in caplog.text
    # recomputed, never the zeroed file: the same result as the first time (same machine, same seed)
    if name.endswith(".parquet"):
        pd.testing.assert_frame_equal(read_outcomes(path), read_outcomes(original))
    else:
        fresh, first = torch.load(path, weights_only=True), torch.load(original, weights_only=True)
        assert fresh.keys() == first.keys() and all(torch.equal(fresh[k], first[k]) for k in first)
    if not extra:
        same = [k for k in again if k in metrics and not k.startswith("time/") and "seconds" not in k]
        assert same and all(again[k] == pytest.approx(metrics[k], nan_ok=True) for k in same)
