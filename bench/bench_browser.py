"""Launch click -> first loss point drawn in a real Chromium, beside a bare torchrun script, repeated.

    python bench/bench_browser.py --repeats 5

Each repeat is a new user's first click: a new server and a new browser load the Train page and wait for the
app's standby (engine/standby.py); a bare torchrun script (import torch, init gloo, print) is timed at the
form's rank count; then Launch is clicked and the page itself records when the progress bar first shows a
step, when the loss chart first draws a point, and when the loss chart was drawn from its spec. The run is
then cancelled, and server and browser closed. The two timings share the machine's load, so the line to read
is "first point minus bare", whose median the issue's target is set on (<= +0.5 s). tests/test_browser.py
takes one such sample in the suite; this bench takes several and prints medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_browser import (CHROMIUM, CHROMIUM_ARGS, WATCH_FIRST_POINT, bare_torchrun_first_output_s,  # noqa: E402
                                served_app)
from app.state import FIRST_RUN  # noqa: E402
from engine import launcher, runstore, standby  # noqa: E402

def one_repeat(page, url: str, runs: Path, folder: Path) -> dict:
    page.goto(url)
    launch = page.get_by_role("button", name="Launch")
    launch.wait_for(timeout=120_000)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not any(s["ready_ranks"] == FIRST_RUN.nproc and s["usable"]
                                                  for s in standby.status(runs)):
        time.sleep(0.1)
    time.sleep(1.0)  # the page settles, as a reader's would while reading the form
    bare_s = bare_torchrun_first_output_s(folder, FIRST_RUN.nproc)
    before = {r["run_id"] for r in runstore.list_runs(runs)}
    page.evaluate(WATCH_FIRST_POINT)
    launch.click()
    page.wait_for_function("() => 'point' in window.__marks && 'progress' in window.__marks", timeout=240_000,
                           polling=50)  # either may come first: the chart and the bar are separate elements
    marks = page.evaluate("() => window.__marks")
    (run_id,) = [r["run_id"] for r in runstore.list_runs(runs) if r["run_id"] not in before]
    warm = runstore.read_status(runs / run_id).get("warm_start") is True
    launcher.cancel(run_id, runs_dir=runs)
    launcher.wait(run_id, runs_dir=runs, timeout_s=120)
    return {"bare_s": bare_s, "progress_s": marks["progress"] / 1000, "point_s": marks["point"] / 1000, "warm": warm,
            "loss_chart_drawn_anew_at_s": [round(ms / 1000, 2) for ms in marks["embeds"]]}


def fresh_server_repeat(folder: Path) -> dict:
    """One repeat as a new user's first click: a new server (nothing imported yet) and a new browser."""
    from playwright.sync_api import sync_playwright

    runs = folder / "runs"
    with served_app(runs, folder / "streamlit.log") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2600})
            page.set_default_timeout(120_000)
            return one_repeat(page, url, runs, folder)
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            row = fresh_server_repeat(Path(tmp))
            rows.append(row)
            print(f"repeat {i + 1}: bare torchrun {row['bare_s']:.2f} s · first step in progress bar "
                  f"{row['progress_s']:.2f} s · first loss point {row['point_s']:.2f} s · point - bare "
                  f"{row['point_s'] - row['bare_s']:+.2f} s · warm start {row['warm']} · loss chart drawn anew at "
                  f"{row['loss_chart_drawn_anew_at_s']} s", flush=True)
    median = {k: statistics.median(r[k] for r in rows) for k in ("bare_s", "progress_s", "point_s")}
    gap = statistics.median(r["point_s"] - r["bare_s"] for r in rows)
    print(f"median of {len(rows)}: bare {median['bare_s']:.2f} s · progress {median['progress_s']:.2f} s · "
          f"first point {median['point_s']:.2f} s · first point - bare {gap:+.2f} s (target <= +0.50 s)")
    if args.json_out:
        args.json_out.write_text(json.dumps({"repeats": rows, "median": median, "median_point_minus_bare_s": gap},
                                            indent=1) + "\n")


if __name__ == "__main__":
    main()
