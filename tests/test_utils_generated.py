"""Generated README blocks and the benchmark result format."""
from __future__ import annotations

import pytest

from advprior.utils.bench import BenchRow, read_results, write_results
from advprior.utils.readme import read_block, replace_block, update_file


def test_replace_block_swaps_only_the_named_body():
    text = "head\n<!-- generated:a -->\nold a\n<!-- /generated:a -->\nmid\n<!-- generated:b -->\nold b\n<!-- /generated:b -->\n"
    out = replace_block(text, "a", "new a\nline 2")
    assert read_block(out, "a") == "new a\nline 2\n" and read_block(out, "b") == "old b\n"
    assert out.startswith("head\n") and "mid\n" in out
    assert replace_block(out, "a", "new a\nline 2") == out  # idempotent


def test_missing_block_names_the_markers():
    with pytest.raises(ValueError, match="generated:nope"):
        replace_block("no markers", "nope", "x")


def test_update_file_reports_change(tmp_path):
    p = tmp_path / "R.md"
    p.write_text("<!-- generated:t -->\n<!-- /generated:t -->\n")
    assert update_file(p, {"t": "| a |"}) is True
    assert update_file(p, {"t": "| a |"}) is False
    assert read_block(p.read_text(), "t") == "| a |\n"


def test_bench_results_round_trip(tmp_path):
    rows = [BenchRow("sweep vs loop", 3.2, "x", ">= 3x", True, "medians of 7")]
    write_results(tmp_path / "r.json", "bench_x", rows, settings={"batch": 16})
    got = read_results(tmp_path / "r.json")
    assert got["script"] == "bench_x" and got["rows"][0]["value"] == 3.2 and got["rows"][0]["holds"] is True
    assert got["machine"]["cores"] >= 1 and "torch" in got["machine"]["versions"]
