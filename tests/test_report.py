"""report.html and the headline rows, on a synthetic run directory whose numbers fix every verdict."""
from __future__ import annotations

import math
import re
import shutil
from html.parser import HTMLParser

import pytest

from advprior.report.cli import main as report_main
from advprior.report.headlines import format_value, headline_frame, headline_rows
from advprior.report.html import REPORT_FILE, build_report
from advprior.report.terminal import headline_table_text
from report_fixture import make_run


class Links(HTMLParser):
    """Every src/href attribute, every section id and every embedded image of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls, self.sections, self.images = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.urls += [v for k, v in attrs if k in ("src", "href") and v is not None]
        if tag == "section":
            self.sections.append(a["id"])
        if tag == "img":
            self.images.append(a["src"])


def parse(html: str) -> Links:
    p = Links()
    p.feed(html)
    return p


def assert_offline(html: str) -> None:
    """No URL that would need the network: src/href are data: URIs or in-page/relative links only."""
    links = parse(html)
    external = [u for u in links.urls if re.match(r"^\s*(https?:)?//", u, re.I) or u.strip().lower().startswith(
        ("http:", "https:", "ftp:"))]
    assert not external, external
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", html), "CSS fetches from the network"
    assert "@import" not in html


def by_key(rows):
    return {r.key: r for r in rows}


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path)


def test_headlines_read_the_stored_numbers_and_judge_by_interval(run):
    h = by_key(headline_rows(run))
    hc = h["attack/deep/high_conf_rate@0.85"]
    assert (hc.value, hc.low, hc.high) == (0.02, 0.01, 0.03)
    assert hc.verdict == "below the paper's 7.5%" and hc.status == "disagrees"
    assert h["attack/deep/mean_second_prob_high_conf@0.85"].verdict == "supported"
    assert h["attack/deep/label_changed_rate@0.85"].value == pytest.approx(0.02 * (1 + 0.85 / 8))
    # paired.csv lists (shallow, deep): the row is deep - shallow, interval flipped
    d = h["depth/deep-shallow/label_changed_rate@0.85"]
    assert (d.value, d.low, d.high) == (pytest.approx(-0.088), pytest.approx(-0.11), pytest.approx(-0.06))
    assert d.verdict == "supported" and d.unit == "pp" and "3 weight layers" in d.notes
    # no paired row at 32/255: the difference of the rates, judged by whether their intervals are disjoint
    d32 = h["depth/deep-shallow/label_changed_rate@32"]
    assert d32.value == pytest.approx(0.1 - 0.5) and d32.low is None and d32.verdict == "supported"
    # deep (dropout 0.5) and deep_nodrop (0.0) differ only in dropout: the dropout claim, not depth
    assert h["dropout/deep-deep_nodrop/label_changed_rate@0.85"].verdict == "unresolved (intervals overlap)"
    assert h["dropout/deep-deep_nodrop/label_changed_rate@32"].verdict == "contradicted"
    assert not any(k.startswith("depth/deep-deep_nodrop") for k in h)
    assert {"transfer/deep->shallow/fooling_rate@0.85", "transfer/shallow->deep/fooling_rate@0.85"} <= set(h)
    assert h["fooling/deep->shallow/cppn/transfer_rate"].verdict == "lower confidence on the target (supported)"
    assert h["fooling/deep/cppn/source_conf_mean"].value == 0.97
    assert h["activations/deep/conv5_1/rel_change@0.85"].verdict == "shrinks with depth (supported)"
    assert "conv3_1" in h["activations/deep/peak_layer@0.85"].quantity
    assert h["defense/mitigation_rate@0.85"].verdict == "consistent with 80%"
    assert h["defense/mitigation_rate@8"].value == 0.75
    assert h["defense/post_clean_acc"].verdict == "no loss"
    assert h["defense/detector_auc@0.85"].verdict == "better than chance"
    assert h["defense/adaptive_fgsm_post_acc@8"].verdict == "more robust than the base model"
    assert h["defense/adaptive_pgd_post_acc@8"].verdict == "no gain over the base model"
    assert list(headline_frame(list(h.values())).columns)[:4] == ["key", "section", "claim", "quantity"]


def test_format_value():
    assert format_value(0.02, 0.011, 0.034, "%") == "2.0% [1.1, 3.4]"
    assert format_value(-0.088, -0.11, -0.06, "pp") == "-8.8 pp [-11.0, -6.0]"
    assert format_value(0.853, None, None, "") == "0.853"
    assert format_value(math.nan, 0.1, 0.2, "%") == "n/a"


def test_report_holds_every_stored_section_and_needs_no_network(run):
    html = build_report(run).read_text()
    assert_offline(html)
    links = parse(html)
    assert links.sections == ["summary", "train", "attack", "prior", "defense", "fooling", "activations", "other",
                              "config", "environment", "timing"]
    figures = sorted((run / "figures").glob("*.png"))
    assert len(links.images) == len(figures) and all(s.startswith("data:image/png;base64,") for s in links.images)
    for text in ("2.0% [1.0, 3.0]", "below the paper&#39;s 7.5%", "Test CPU", "First 40 of 60 rows", "synthetic"):
        assert text in html, text
    timing = html[html.index('<section id="timing">'):]
    # pipeline order; the report's own time (recorded after the page is written) is left out
    assert re.findall(r"<td>(\w+)</td><td class=\"num\">[\d.]+</td>", timing) == [
        "train", "attack", "prior", "defense", "fooling", "activations", "total"]
    assert "<td class=\"num\">8</td>" in html and "800.0%" not in html  # n_high_conf is a count


@pytest.mark.parametrize("absent", ["fooling", "activations", "defense", "attack"])
def test_a_stage_that_did_not_run_has_no_section(tmp_path, absent):
    stages = [s for s in ("train", "attack", "prior", "defense", "fooling", "activations") if s != absent]
    run = make_run(tmp_path, stages)
    html = build_report(run).read_text()
    assert absent not in parse(html).sections
    assert not any(r.key.startswith(absent if absent != "attack" else "attack/") for r in headline_rows(run))


def test_rebuild_from_stored_results_is_identical(run, capsys):
    first = build_report(run).read_bytes()
    (run / REPORT_FILE).unlink()
    assert report_main([str(run)]) == 0   # advprior-report RUN_DIR
    out = capsys.readouterr().out
    assert (run / REPORT_FILE).read_bytes() == first
    assert "below the paper's 7.5%" in out and str(run / REPORT_FILE) in out
    # a copy elsewhere (another absolute path) gives the same page
    copy = shutil.copytree(run, run.parent / "elsewhere" / run.name)
    assert build_report(copy).read_bytes() == first


def test_report_cli_rejects_what_is_not_a_run(tmp_path, capsys):
    with pytest.raises(SystemExit):
        report_main([str(tmp_path / "missing")])
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        report_main([str(tmp_path / "empty")])
    assert "has no metrics.json" in capsys.readouterr().err


def test_terminal_table_lists_every_headline(run):
    rows = headline_rows(run)
    text = headline_table_text(rows, run / REPORT_FILE, width=200)
    for r in rows:
        assert r.formatted() in text
    assert text.rstrip().endswith(str(run / REPORT_FILE))


def test_train_only_run_reports_the_test_accuracy(tmp_path):
    run = make_run(tmp_path, ["train"])
    rows = headline_rows(run)
    assert [r.key for r in rows] == ["train/deep/test_acc", "train/shallow/test_acc"]
    assert_offline(build_report(run).read_text())


def test_dropout_twins_ignore_keys_left_null(tmp_path):
    """The claims experiment's ``vgg_small_nodropout`` is written without the keys the schema adds as null to
    ``vgg_small`` (``checkpoint``, ``mean``, ``std``): still the dropout pair; any other difference is not."""
    import yaml

    from advprior.report.headlines import _dropout_twins
    from advprior.report.rundata import RunData
    base = {"_target_": "x.vgg", "widths": [8, 16], "dropout": 0.3, "checkpoint": None, "mean": None}
    models = {"a": base, "b": {"_target_": "x.vgg", "widths": [8, 16], "dropout": 0.0},
              "c": {"_target_": "x.vgg", "widths": [8, 32], "dropout": 0.0}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": models}))
    run = RunData(tmp_path)
    assert _dropout_twins(run, "a", "b") and not _dropout_twins(run, "a", "c") and not _dropout_twins(run, "b", "c")
