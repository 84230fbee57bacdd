"""The whole path in a real browser: streamlit run, click Launch with the defaults, watch the run arrive.

Chromium renders Vega-Lite as SVG, so the test reads the drawn marks themselves: the loss lines'
points and the memory bars' aria labels (one per rank and category). The app keeps a warm standby
(engine/standby.py) for the form's shape, and the test uses it, as a user's first click would; a bare
torchrun script is timed in the same test run, so the two timings share the machine's load. Every request
the page makes is recorded: none may leave the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "test-artifacts"
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
# Installed just before the click: when (ms after it) the progress bar first shows a step, when the loss chart
# first draws a point, and each time the loss chart's SVG is made anew (Vega embedding it from its spec).
WATCH_FIRST_POINT = """() => {
    window.__marks = {embeds: []};
    const start = performance.now();
    let lastSvg = null;
    const look = () => {
        const now = performance.now() - start;
        const chart = [...document.querySelectorAll('[data-testid=stVegaLiteChart]')]
            .find(c => c.textContent.includes('Training loss'));
        const svg = chart && chart.querySelector('svg');
        if (svg && svg !== lastSvg) { lastSvg = svg; window.__marks.embeds.push(now); }
        if (!('progress' in window.__marks) && /step [1-9][0-9]* of/.test(document.body.innerText))
            window.__marks.progress = now;
        if (!('point' in window.__marks) && chart
                && [...chart.querySelectorAll('g.mark-line path')].some(p => (p.getAttribute('d') || '').length))
            window.__marks.point = now;
    };
    new MutationObserver(look).observe(document.body, {subtree: true, childList: true, characterData: true,
                                                        attributes: true});
}"""
BARE_SCRIPT = """
import torch, torch.distributed as dist
dist.init_process_group("gloo")
print("ready", flush=True)
dist.destroy_process_group()
"""


def bare_torchrun_first_output_s(folder: Path, nproc: int = 2) -> float:
    """Seconds from starting torchrun on a script that only imports torch, inits gloo and prints, to that print."""
    script = folder / "bare.py"
    script.write_text(BARE_SCRIPT)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc-per-node={nproc}", str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:
            if "ready" in line:
                return time.monotonic() - started
        raise AssertionError(f"the bare torchrun script never printed (exit code {proc.wait()})")
    finally:
        proc.stdout.close()
        proc.wait(timeout=60)


def outside_requests(urls: list[str]) -> list[str]:
    """Requests to anything but this machine (data: and blob: URLs never leave the page)."""
    parsed = [(url, urllib.parse.urlsplit(url)) for url in urls]
    return [url for url, part in parsed if part.scheme not in ("data", "blob") and part.hostname not in LOOPBACK]


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


@contextlib.contextmanager
def served_app(runs: Path, log_path: Path):
    """`streamlit run app/shardlab.py` on a free loopback port with the standby on, runs in `runs`; yields the URL.
    On the way out the standby is dropped and the server stopped."""
    from engine import standby

    port = free_port()
    with open(log_path, "ab") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app/shardlab.py", "--server.port", str(port),
             "--server.headless", "true"],
            cwd=ROOT, env={**os.environ, "SHARDLAB_RUNS_DIR": str(runs), standby.SWITCH: "1"}, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, server)
            yield url
        finally:
            standby.drop(runs)
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def chart(page, title: str):
    return page.locator("[data-testid=stVegaLiteChart]", has_text=title)


def loss_points(page) -> list[int]:
    """Points drawn per loss line (ranks and the mean): each 'L' in an SVG path is one more point. Read in one
    evaluate, so a chart redrawn between two reads (every second while the run trains) never stalls the read."""
    paths = page.evaluate("""() => {
        const chart = [...document.querySelectorAll('[data-testid=stVegaLiteChart]')]
            .find(c => c.textContent.includes('Training loss'));
        return chart ? [...chart.querySelectorAll('g.mark-line path')].map(p => p.getAttribute('d') || '') : [];
    }""")
    return [d.count("L") + 1 for d in paths if d]  # the chart laid out before the first step has no line yet


def memory_ranks(page) -> set[str]:
    bars = chart(page, "Memory per rank after the newest step").locator("g.mark-rect path")
    labels = [bars.nth(i).get_attribute("aria-label") or "" for i in range(bars.count())]
    return {part.split(": ", 1)[1] for label in labels for part in label.split("; ") if part.startswith("rank: ")}


@pytest.mark.browser
@pytest.mark.torchrun
def test_launch_with_defaults_draws_the_run_live(tmp_path):
    require_browser()
    from playwright.sync_api import sync_playwright

    from app.state import FIRST_RUN
    from app.train_form import PREVIEW_TITLE
    from engine import launcher, runstore, standby

    runs = tmp_path / "runs"
    with served_app(runs, tmp_path / "streamlit.log") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2600})
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            page.set_default_timeout(120_000)  # a loaded 2-core box can take long to serve the first page
            page.goto(url)
            launch = page.get_by_role("button", name="Launch")
            launch.wait_for(timeout=60_000)
            # The page asked for a standby of the form's shape; a user reads the form while it warms up.
            asked = time.monotonic()
            deadline = asked + 240
            while time.monotonic() < deadline and not any(
                    s["ready_ranks"] == FIRST_RUN.nproc for s in standby.status(runs)):
                time.sleep(0.1)
            standby_ready_s = time.monotonic() - asked
            (warm,) = standby.status(runs)
            assert warm["usable"] and warm["ready_ranks"] == FIRST_RUN.nproc, warm
            chart(page, PREVIEW_TITLE).wait_for()  # the form shows the predicted staircase
            bare_s = bare_torchrun_first_output_s(tmp_path, FIRST_RUN.nproc)
            page.evaluate(WATCH_FIRST_POINT)
            clicked_wall = time.time()
            launch.click()

            page.wait_for_function("() => 'point' in window.__marks && 'progress' in window.__marks", timeout=240_000,
                                   polling=50)  # either may come first: the chart and the bar are separate elements
            marks = page.evaluate("() => window.__marks")
            first_progress_s = marks["progress"] / 1000  # the server has read a first step from disk
            first_point_s = marks["point"] / 1000
            assert len(loss_points(page)) == 3, "a loss line per rank plus the mean"
            # The loss chart was laid out, empty, while the ranks started: the first step is rows added to a
            # chart already drawn (app/charts.live_spec), not a chart drawn from its spec at that moment.
            assert marks["embeds"] and marks["embeds"][0] < marks["point"] - 50, marks

            (run_id,) = [r["run_id"] for r in runstore.list_runs(runs)]  # (runs/ also holds the launch queue)
            spec = runstore.read_spec(runs / run_id)
            assert spec == FIRST_RUN, "Launch with the defaults runs the form's first run"
            assert runstore.read_status(runs / run_id).get("warm_start") is True, "the standby took the run"
            page.wait_for_function(
                """() => [...document.querySelectorAll('[data-testid=stVegaLiteChart]')]
                    .some(c => c.textContent.includes('Memory per rank after the newest step'))""",
                timeout=60_000,
            )
            assert memory_ranks(page) == {"rank 0", "rank 1"}
            ARTIFACTS.mkdir(exist_ok=True)
            page.wait_for_function(f"() => /step ([4-9][0-9]|1[01][0-9]) of {spec.steps}/.test(document.body.innerText)",
                                   timeout=240_000)  # mid-training: a third of the way or more
            page.mouse.move(1, 1)
            page.screenshot(path=str(ARTIFACTS / "run_view_training.png"), timeout=60_000)

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
            page.mouse.move(1, 1)  # no hover toolbar in the picture
            page.wait_for_timeout(300)
            page.screenshot(path=str(ARTIFACTS / "run_view.png"), timeout=60_000)
            # The engine's own time to its first metric line, from the worker's timestamp in that line:
            # what the page adds on top of it is the dashboard's share of the wait.
            first_record_s = min(r["t"] for r in runstore.read_metrics(runs / run_id) if r["kind"] == "train") - clicked_wall
            timings = {"launch_click_to_first_metric_line_on_disk_s": round(first_record_s, 2),
                       "launch_click_to_first_step_in_progress_bar_s": round(first_progress_s, 2),
                       "launch_click_to_first_loss_point_s": round(first_point_s, 2),
                       "bare_torchrun_script_first_output_s": round(bare_s, 2),
                       "first_loss_point_minus_bare_torchrun_s": round(first_point_s - bare_s, 2),
                       "loss_chart_laid_out_s": round(marks["embeds"][0] / 1000, 2),
                       "standby_ready_after_page_load_s": round(standby_ready_s, 2),
                       "standby_rss_bytes": warm["rss_bytes"],
                       "run_time_s": round(runstore.read_status(runs / run_id)["ended_at"] - clicked_wall, 2)}
            (ARTIFACTS / "browser_timings.json").write_text(json.dumps(timings, indent=1) + "\n")
            print(f"launch click -> first metric line on disk: {first_record_s:.2f} s, -> first step in the "
                  f"progress bar: {first_progress_s:.2f} s, -> first loss point drawn: {first_point_s:.2f} s; "
                  f"bare torchrun script in the same test: {bare_s:.2f} s")
            assert not outside_requests(requests), f"the page reached outside the machine: {outside_requests(requests)}"
            assert requests, "the request recorder saw the page load"
        finally:
            for run in runstore.list_runs(runs):
                if run["state"] in runstore.ACTIVE_STATES:
                    launcher.cancel(run["run_id"], runs_dir=runs)
            browser.close()
