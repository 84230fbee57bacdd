"""Server-side cost of one live refresh of the run view, on a 10,000-step x 2-rank run.

    python bench/bench_dashboard.py            # refresh cost (target < 300 ms)
    python bench/bench_dashboard.py --launch   # also: launch -> first loss record on disk (a real torchrun job)

The 10,000-step run is a BENCHMARK FIXTURE written in the engine contract's format to a temporary
folder (tests/app_fixtures.py): its numbers are synthetic and never shown in the app. The timed code is
what the live fragment calls: app.run_data.load_snapshot (incremental read + downsampling) and every
chart builder of app.run_view, then Streamlit's own Altair -> Vega-Lite + Arrow conversion.
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

from app import charts  # noqa: E402
from app.run_data import MetricsTail, load_snapshot  # noqa: E402
from tests.app_fixtures import train_record, write_fixture_run  # noqa: E402
from engine import runstore  # noqa: E402
from streamlit.elements.vega_charts import _convert_altair_to_vega_lite_spec, _marshall_chart_data  # noqa: E402
from streamlit.proto.VegaLiteChart_pb2 import VegaLiteChart  # noqa: E402

STEPS, RANKS, REFRESHES, WARMUP = 10_000, 2, 20, 3


def build_charts(snap) -> list:
    """The charts app/run_view.py draws for one snapshot, in the same order."""
    built = [charts.loss_chart(snap.train, ranks=range(RANKS))]
    if len(snap.evals) > 1:
        built.append(charts.accuracy_chart(snap.evals))
    return built + [
        charts.memory_chart(snap.latest), charts.memory_over_steps_chart(snap.train), charts.phase_chart(snap.latest),
        charts.comm_chart(snap.latest, snap.param_count, snap.bytes_per_element),
        charts.cumulative_comm_chart(snap.train), charts.throughput_chart(snap.train), charts.step_time_chart(snap.train),
    ]


def marshall(chart) -> int:
    """What the run view sends: charts.live_spec's spec with its rows as Arrow bytes (st.vega_lite_chart), or,
    for the two-layer traffic chart, st.altair_chart's own conversion."""
    proto = VegaLiteChart()
    try:
        spec = charts.live_spec(chart)
    except TypeError:
        spec = _convert_altair_to_vega_lite_spec(chart)
    _marshall_chart_data(proto, spec)
    proto.spec = json.dumps(spec)
    return proto.ByteSize()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def refresh_cost(run_dir: Path) -> None:
    tail = MetricsTail(run_dir)
    t0 = time.perf_counter()
    snap = load_snapshot(run_dir, tail)
    cold = time.perf_counter() - t0
    print(f"first open (parse all {STEPS * RANKS:,} records once):   {ms(cold)}")

    t0 = time.perf_counter()
    full = runstore.metrics_frame(run_dir)
    print(f"for comparison, runstore.metrics_frame re-parse:      {ms(time.perf_counter() - t0)}  ({len(full):,} rows)")

    load_s, build_s, marshall_s, total_s, payload = [], [], [], [], 0
    step = STEPS
    for i in range(WARMUP + REFRESHES):
        step += 1  # the run advances one step between refreshes, as a live run does
        for rank in range(RANKS):
            with open(run_dir / "metrics" / f"rank{rank}.jsonl", "a") as f:
                f.write(json.dumps(train_record(step, rank, RANKS, "zero3", 9_098, time.time())) + "\n")
        t0 = time.perf_counter()
        snap = load_snapshot(run_dir, tail)
        t1 = time.perf_counter()
        built = build_charts(snap)
        t2 = time.perf_counter()
        payload = sum(marshall(c) for c in built)
        t3 = time.perf_counter()
        if i >= WARMUP:  # the first refreshes warm Altair's and pandas' caches
            load_s.append(t1 - t0), build_s.append(t2 - t1), marshall_s.append(t3 - t2), total_s.append(t3 - t0)

    points = snap.train.groupby("rank")["step"].nunique().max()
    print(f"live refresh, median of {REFRESHES} (run {step:,} steps x {RANKS} ranks, {points} points per series drawn):")
    print(f"  load snapshot (new lines + downsample):  {ms(statistics.median(load_s))}")
    print(f"  build {len(built)} Altair charts:                 {ms(statistics.median(build_s))}")
    print(f"  Vega-Lite spec + Arrow (as sent):        {ms(statistics.median(marshall_s))}")
    print(f"  total:                                   {ms(statistics.median(total_s))}  "
          f"(min {ms(min(total_s)).strip()}, max {ms(max(total_s)).strip()}; target < 300 ms)")
    print(f"  chart data and specs sent to the browser per refresh: {payload / 1024:,.0f} KiB")


def launch_to_first_record(runs_dir: Path) -> None:
    from engine import launcher
    from engine.spec import JobSpec

    t0 = time.perf_counter()
    run_id = launcher.launch(JobSpec(steps=10), runs_dir=runs_dir)
    run_dir = runs_dir / run_id
    while not (tail := MetricsTail(run_dir)).update().shape[0]:
        if runstore.read_status(run_dir).get("state") not in runstore.ACTIVE_STATES:
            raise SystemExit(f"run ended before its first step: {runstore.read_status(run_dir)}")
        time.sleep(0.02)
    first = time.perf_counter() - t0
    status = launcher.wait(run_id, runs_dir=runs_dir, timeout_s=600)
    print(f"launch -> first loss record on disk (mlp tiny, digits, 2 CPU ranks): {first:.2f} s "
          f"(the browser adds up to one refresh period, 1 s, plus drawing); run {status['state']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--launch", action="store_true", help="also time a real launch to its first loss record")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shardlab-bench-") as tmp:
        run_dir = write_fixture_run(Path(tmp), "benchmark-fixture-10k", strategy="zero3", nproc=RANKS,
                                    steps=STEPS * 2, steps_done=STEPS, state="running")
        print(f"benchmark fixture (synthetic, contract format): {run_dir}")
        refresh_cost(run_dir)
        if args.launch:
            launch_to_first_record(Path(tmp) / "runs")


if __name__ == "__main__":
    main()
