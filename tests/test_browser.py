"""The whole path in a real browser: streamlit run, click Launch with the defaults, watch the run arrive.

Chromium renders Vega-Lite as SVG, so the test reads the drawn marks themselves: the loss lines'
points and the memory bars' aria labels (one per rank and category).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "test-artifacts"


def require_browser():
    """Skips locally when chromium or playwright is missing; in CI (CI set) that is a failure."""
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} not found"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "python playwright not installed"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run in CI: {missing}")
        pytest.skip(missing)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, "streamlit exited before it served"
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError("streamlit did not become healthy")


def chart(page, title: str):
    return page.locator("[data-testid=stVegaLiteChart]", has_text=title)


def loss_points(page) -> list[int]:
    """Points drawn per loss line (ranks and the mean): each 'L' in an SVG path is one more point."""
    paths = chart(page, "Training loss").locator("g.mark-line path")
    return [(paths.nth(i).get_attribute("d") or "").count("L") + 1 for i in range(paths.count())]


def memory_ranks(page) -> set[str]:
    bars = chart(page, "Memory per rank after the newest step").locator("g.mark-rect path")
    labels = [bars.nth(i).get_attribute("aria-label") or "" for i in range(bars.count())]
    return {part.split(": ", 1)[1] for label in labels for part in label.split("; ") if part.startswith("rank: ")}


@pytest.mark.browser
@pytest.mark.torchrun
def test_launch_with_defaults_draws_the_run_live(tmp_path):
    require_browser()
    from playwright.sync_api import sync_playwright

    from engine import launcher, runstore

    runs = tmp_path / "runs"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "streamlit.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app/shardlab.py", "--server.port", str(port),
         "--server.headless", "true"],
        cwd=ROOT, env={**os.environ, "SHARDLAB_RUNS_DIR": str(runs)}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_healthy(url, server)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 2600})
                page.set_default_timeout(120_000)  # a loaded 2-core box can take long to serve the first page
                page.goto(url)
                launch = page.get_by_role("button", name="Launch")
                launch.wait_for(timeout=60_000)
                clicked, clicked_wall = time.monotonic(), time.time()
                launch.click()

                deadline = clicked + 240
                page.wait_for_function("() => /step [1-9][0-9]* of/.test(document.body.innerText)", timeout=240_000)
                first_progress_s = time.monotonic() - clicked  # the server has read a first step from disk
                while time.monotonic() < deadline and not (loss_points(page) and min(loss_points(page)) >= 1):
                    page.wait_for_timeout(100)
                first_point_s = time.monotonic() - clicked
                assert len(loss_points(page)) == 3, "a loss line per rank plus the mean"

                (run_id,) = [r["run_id"] for r in runstore.list_runs(runs)]  # (runs/ also holds the launch queue)
                spec = runstore.read_spec(runs / run_id)
                assert (spec.model, spec.size, spec.dataset, spec.nproc, spec.strategy) == ("mlp", "tiny", "digits", 2, "ddp")
                page.wait_for_function(
                    """() => [...document.querySelectorAll('[data-testid=stVegaLiteChart]')]
                        .some(c => c.textContent.includes('Memory per rank after the newest step'))""",
                    timeout=60_000,
                )
                assert memory_ranks(page) == {"rank 0", "rank 1"}

                # Let the run finish so the screenshot shows a whole run, then check the view settled.
                assert launcher.wait(run_id, runs_dir=runs, timeout_s=300)["state"] == "succeeded"
                done = f"step {spec.steps} of {spec.steps}"
                page.wait_for_function(  # the fragment saw the end: one full rerun, the timer stops
                    f"""() => document.body.innerText.includes('{done}') && document.body.innerText.includes('succeeded')
                        && ![...document.querySelectorAll('button')].some(b => b.innerText.includes('Cancel'))""",
                    timeout=60_000,
                )
                page.wait_for_timeout(1500)
                steps = len(runstore.metrics_frame(runs / run_id)) // 2
                assert min(loss_points(page)) == steps == spec.steps
                ARTIFACTS.mkdir(exist_ok=True)
                page.mouse.move(1, 1)  # no hover toolbar in the picture
                page.wait_for_timeout(300)
                page.screenshot(path=str(ARTIFACTS / "run_view.png"), timeout=60_000)
                # The engine's own time to its first metric line, from the worker's timestamp in that line:
                # what the page adds on top of it is the dashboard's share of the wait.
                first_record_s = min(r["t"] for r in runstore.read_metrics(runs / run_id) if r["kind"] == "train") - clicked_wall
                timings = {"launch_click_to_first_metric_line_on_disk_s": round(first_record_s, 2),
                           "launch_click_to_first_step_in_progress_bar_s": round(first_progress_s, 2),
                           "launch_click_to_first_loss_point_s": round(first_point_s, 2)}
                (ARTIFACTS / "browser_timings.json").write_text(json.dumps(timings) + "\n")
                print(f"launch click -> first metric line on disk: {first_record_s:.2f} s, -> first step in the "
                      f"progress bar: {first_progress_s:.2f} s, -> first loss point drawn: {first_point_s:.2f} s")
            finally:
                browser.close()
    finally:
        for run in runstore.list_runs(runs):
            if run["state"] in runstore.ACTIVE_STATES:
                launcher.cancel(run["run_id"], runs_dir=runs)
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
