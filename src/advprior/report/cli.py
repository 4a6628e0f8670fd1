"""``advprior-report RUN_DIR [RUN_DIR ...]``: rebuild ``report.html`` from a run's stored results (nothing is
recomputed), or the sweep report of a multirun sweep directory; prints the headline table."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .headlines import headline_rows
from .html import build_report
from .sweep import build_sweep_report, is_sweep_dir
from .terminal import headline_table_text

log = logging.getLogger("advprior.report")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="advprior-report", description=__doc__)
    ap.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                    help="a run directory (logs/<task>/runs/<date>_<time>) or a multirun sweep directory")
    ap.add_argument("--quiet", action="store_true", help="print only the path of each report")
    args = ap.parse_args(argv)
    for d in args.run_dirs:
        if not d.is_dir():
            ap.error(f"{d} is not a directory: pass a run directory (logs/<task>/runs/<date>_<time>) or a "
                     "multirun sweep directory (logs/<task>/multiruns/<date>_<time>)")
        if is_sweep_dir(d):
            path = build_sweep_report(d)
        else:
            if not (d / "metrics.json").is_file():
                ap.error(f"{d} has no metrics.json: it is not a run directory of advprior (or no stage finished)")
            path = build_report(d)
            if not args.quiet:
                print(headline_table_text(headline_rows(d)))
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
