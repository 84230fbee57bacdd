"""The What-if page through AppTest: widgets driven by key, numbers read from the table and from the charts' protos."""

import json
from pathlib import Path

import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from app.whatif_charts import BAR_TITLE as BAR
from app.whatif_charts import COMPARE_TITLE as COMPARE
from app.whatif_charts import LINE_TITLE as LINE
from app import whatif_charts as charts
from app.charts import CATEGORY_COLORS
from app.whatif_charts import (activations_table, compare_table, curve_ranks, predicted_vs_measured_chart, stage_table,
                               summary_table, terms_by_stage)
from tests.app_fixtures import charts_by_title, write_fixture_run
from engine.estimate import GB, GIB, MAX_RANKS, MIB, Scenario, activations_for_spec, estimate_for_spec, stage_rows
from engine.spec import JobSpec

PAGE = str(Path(__file__).resolve().parent.parent / "app" / "views" / "whatif.py")


@pytest.fixture
def runs(tmp_path, monkeypatch):
    path = tmp_path / "runs"
    monkeypatch.setenv("SHARDLAB_RUNS_DIR", str(path))
    st.cache_data.clear()
    return path


def page(runs) -> AppTest:
    return AppTest.from_file(PAGE, default_timeout=60).run()


def summary(at):
    """The compact table: one row per stage, the columns a reader needs first."""
    return next(d.value for d in at.dataframe if "fits" in d.value.columns)


def parse_cell(text: str):
    if text in ("yes", "no"):
        return text == "yes"
    for kind in (int, float):
        try:
            return kind(text.replace(",", ""))
        except ValueError:
            pass
    return text


def table(at):
    """The full breakdown (one row per quantity, one column per stage) read back as one row per stage, each number
    parsed from the text the page shows."""
    turned = next(d.value for d in at.dataframe if "quantity" in d.value.columns)
    return turned.set_index("quantity").T.map(parse_cell).rename_axis("stage").reset_index()


def set_params(at, text: str, ranks: int) -> AppTest:
    at.radio(key="whatif_source").set_value("Parameter count").run()
    at.text_input(key="whatif_params").set_value(text)
    at.number_input(key="whatif_ranks").set_value(ranks)
    return at.run()


def no_overheads(at) -> AppTest:
    """The paper's model states alone: CUDA context and allocator reserve off (they are on by default)."""
    at.number_input(key="whatif_context_gib").set_value(0.0)
    at.number_input(key="whatif_reserve_pct").set_value(0)
    return at.run()


def paper_7_5b_on_64(**kwargs) -> pd.DataFrame:
    """Figure 1 of the ZeRO paper (7.5B, 64 GPUs), shown in GB, with an 80 GB A100's answers."""
    rows = stage_rows(Scenario(7_500_000_000, 64, **kwargs), capacity_bytes=80 * GB)
    return stage_table(rows, GB, "GB", 64)


def test_summary_keeps_the_first_columns_and_its_parts_add_up_to_the_total():
    table = paper_7_5b_on_64(activation_bytes=GIB)
    compact = summary_table(table, "GB")
    assert list(compact.columns) == ["stage", "total per GPU (GB)", "fits", "model states (GB)",
                                     "gathered layers (GB)", "activations (GB)", "overheads (GB)"]
    assert len(compact.columns) < len(table.columns) / 2  # the point: it fits beside an open sidebar
    parts = compact[["model states (GB)", "gathered layers (GB)", "activations (GB)", "overheads (GB)"]].sum(axis=1)
    assert list(parts) == pytest.approx(list(compact["total per GPU (GB)"]))
    assert list(compact["total per GPU (GB)"]) == pytest.approx([120 + GIB / GB, 31.40625 + GIB / GB,
                                                                 16.640625 + GIB / GB, 1.875 + GIB / GB])


def test_terms_by_stage_turns_the_table_and_writes_every_number_out():
    table = paper_7_5b_on_64()
    turned = terms_by_stage(table)
    assert list(turned.columns) == ["quantity", "DDP (stage 0)", "ZeRO-1", "ZeRO-2", "ZeRO-3"]
    assert list(turned["quantity"]) == list(table.columns[1:])  # every quantity, its unit in its label
    row = turned.set_index("quantity")
    assert list(row.loc["total bytes"]) == ["120,000,000,000", "31,406,250,000", "16,640,625,000", "1,875,000,000"]
    assert list(row.loc["total per GPU (GB)"]) == ["120.000", "31.406", "16.641", "1.875"]
    assert list(row.loc["fits"]) == ["no", "yes", "yes", "yes"]
    assert list(row.loc["fewest GPUs that fit"]) == ["never", "2", "2", "2"]
    assert list(row.loc["largest model on 64 GPUs"]) == ["5.0B", "19.1B", "36.1B", "320.0B"]  # 80 GB / 16 B, ...
    assert list(row.loc["fits host"]) == [""] * 4  # no host memory given: no answer, not "None"
    assert all(isinstance(v, str) for v in turned.drop(columns="quantity").to_numpy().ravel())  # one type a column


def test_default_page_draws_every_stage(runs):
    at = page(runs)
    assert not at.exception and not at.error
    assert list(table(at)["stage"]) == ["DDP (stage 0)", "ZeRO-1", "ZeRO-2", "ZeRO-3"]
    assert {BAR, LINE} <= set(charts_by_title(at))
    assert any("124,439,808" in m.value and "124.4M" in m.value for m in at.markdown)  # GPT-2 small, the first
    assert any("Pick a ShardLab model" in i.value for i in at.info)
    # Fewest GPUs and largest model sit under each headline number, formatted.
    captions = [c.value for c in at.caption if c.value.startswith("fewest GPUs")]
    assert len(captions) == 4 and all("largest model on 8: " in c for c in captions)


def test_figure_1_on_the_page_and_in_the_charts(runs):
    at = no_overheads(set_params(page(runs), "7.5B", 64))
    at.radio(key="whatif_units").set_value("GB (1e9 bytes, the ZeRO paper's)").run()
    frame = table(at)
    assert list(frame["total bytes"]) == [120 * GB, 31_406_250_000, 16_640_625_000, 1_875_000_000]
    assert [round(v, 1) for v in frame["total per GPU (GB)"]] == [120.0, 31.4, 16.6, 1.9]
    assert list(frame["fits"]) == [False, True, True, True]  # on an 80 GB A100
    compact = summary(at)  # the first table: the same answers, fewer columns
    assert list(compact["stage"]) == list(frame["stage"]) and list(compact["fits"]) == list(frame["fits"])
    assert list(compact["total per GPU (GB)"]) == pytest.approx([b / GB for b in frame["total bytes"]])

    frames = charts_by_title(at)
    bars = next(f for f in frames[BAR] if "term" in f.columns)
    assert bars.groupby("stage")["bytes"].sum().to_dict() == dict(zip(frame["stage"], frame["total bytes"]))
    assert set(bars[bars["stage"] == "ZeRO-1"]["term"]) == {"parameters", "gradients", "optimizer state", "master weights"}
    rule = next(f for f in frames[BAR] if "capacity" in f.columns)
    assert rule["capacity"].iloc[0] == pytest.approx(81920 * MIB / 1e9)  # A100 80 GB, in GB

    line = next(f for f in frames[LINE] if "ranks" in f.columns)
    at_64 = line[line["ranks"] == 64].set_index("stage")["total_bytes"]
    assert at_64.to_dict() == dict(zip(frame["stage"], frame["total bytes"]))
    assert line["ranks"].max() >= 256 and (line.groupby("stage")["ranks"].count() == line["ranks"].nunique()).all()


def test_a_smaller_custom_gpu_changes_the_answers(runs):
    at = no_overheads(set_params(page(runs), "7.5B", 64))
    at.selectbox(key="whatif_gpu").set_value("Custom capacity").run()
    at.number_input(key="whatif_gpu_custom_gib").set_value(12.0).run()
    frame = table(at)
    assert list(frame["fits"]) == [False, False, False, True]
    # 12 GiB = 12.88 GB: the replicated 15 GB of ZeRO-2 never fits; ZeRO-3 needs 120 GB / 12.88 GB -> 10 GPUs.
    assert list(frame["fewest GPUs that fit"]) == ["never", "never", "never", 10]
    assert [m.delta for m in at.metric] == ["does not fit"] * 3 + ["fits"]


def test_activations_and_overheads_are_added_to_every_stage(runs):
    at = no_overheads(page(runs))
    at.selectbox(key="whatif_arch").set_value("llama-2-7b").run()
    at.number_input(key="whatif_batch").set_value(0).run()
    without = table(at)["total bytes"]
    at.number_input(key="whatif_batch").set_value(2)
    at.number_input(key="whatif_seq").set_value(4096)
    at.selectbox(key="whatif_recompute").set_value("full")
    at.number_input(key="whatif_context_gib").set_value(0.5)
    at.run()
    added = table(at)["total bytes"] - without
    activations = 32 * 2 * 4096 * 4096 * 2 + 2 * 4096 * (2 * 4096 * 2 + 4 * 32000)  # full: 2sbh per layer + output
    assert list(added) == [activations + GIB // 2] * 4  # not sharded by ZeRO
    assert any("6,738,415,616" in m.value for m in at.markdown)


def test_shardlab_model_is_estimated_per_rank_exactly(runs):
    at = page(runs)
    at.radio(key="whatif_source").set_value("ShardLab model (exact)").run()
    at.number_input(key="whatif_ranks").set_value(4).run()
    assert at.radio(key="whatif_memory_model").value == "pytorch"  # a ShardLab model: the exact model by default
    predicted = [max(s.total_bytes for s in estimate_for_spec(JobSpec(strategy=st_, nproc=4))) for st_ in ("ddp", "zero1", "zero2", "zero3")]
    assert list(table(at)["model states bytes"]) == predicted == [143544, 104532, 72304, 36424]
    assert at.selectbox(key="whatif_engine_precision").value == "fp32"
    # ShardLab's models start without GPU overheads (their runs measure model states), so the bytes stay
    # readable, and the caption names the unit the table shows (KiB here, not GiB).
    assert at.number_input(key="whatif_context_gib").value == 0.0 and at.number_input(key="whatif_reserve_pct").value == 0
    assert any(c.value.startswith("KiB = 2^10 bytes") for c in at.caption)
    assert "KiB" in " ".join(table(at).columns)
    assert list(table(at)["total bytes"])[:2] == predicted[:2]  # DDP and ZeRO-1 gather nothing: the total is exact


def test_uploaded_config_is_counted_and_a_bad_one_explained(runs):
    at = page(runs)
    at.radio(key="whatif_source").set_value("Hugging Face config.json").run()
    assert any("Upload a Hugging Face config.json" in i.value for i in at.info)
    config = {"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12}
    at.file_uploader(key="whatif_config").set_value(("config.json", json.dumps(config).encode(), "application/json")).run()
    assert not at.error and any("124,439,808" in m.value for m in at.markdown)
    at.file_uploader(key="whatif_config").set_value(("config.json", b'{"model_type": "t5"}', "application/json")).run()
    assert [e.value for e in at.error] == ["unsupported model_type 't5' (supported: gpt2, llama, mistral, qwen2, gemma, phi3, mixtral)"]


def test_an_unreadable_parameter_count_is_an_error_not_a_crash(runs):
    at = set_params(page(runs), "-5", 8)
    assert not at.exception
    assert "cannot read a parameter count" in at.error[0].value


def test_predicted_beside_measured_for_a_finished_run(runs):
    write_fixture_run(runs, "fixture-zero1", strategy="zero1", nproc=2, psi=8970)
    other = write_fixture_run(runs, "fixture-other-size", strategy="ddp", nproc=2, psi=8970)
    spec = json.loads((other / "spec.json").read_text())
    (other / "spec.json").write_text(json.dumps({**spec, "size": "small"}))  # another model: not offered
    at = page(runs)
    at.radio(key="whatif_source").set_value("ShardLab model (exact)").run()  # mlp/tiny on digits
    assert at.selectbox(key="whatif_run").value == "fixture-zero1"
    assert at.selectbox(key="whatif_run").options == ["fixture-zero1 — zero1, 2 ranks, fp32"]
    shown = next(d.value for d in at.dataframe if "measured (bytes)" in d.value.columns)
    assert list(shown.columns) == ["rank", "category", "predicted (bytes)", "measured (bytes)", "difference (bytes)",
                                   "difference (%)"]
    assert list(shown["category"][:5]) == ["parameters", "master params (ZeRO-2 shards)", "gradients",
                                           "optimizer state", "total"]  # as the run charts name them
    compared = shown.map(lambda v: parse_cell(v) if isinstance(v, str) else v)
    assert len(compared) == 2 * 5  # ranks x (params, master, grads, optimizer, total)
    predicted = estimate_for_spec(JobSpec(strategy="zero1", nproc=2))
    totals = compared[compared["category"] == "total"]
    assert list(totals["predicted (bytes)"]) == [p.total_bytes for p in predicted]
    # The fixture follows the idealised formula (optimizer 2 x 4Ψ/N, no step tensors, even split), so it differs.
    rows = compared.set_index(["rank", "category"])
    assert rows.loc[(0, "parameters"), "difference (bytes)"] == 0
    row = rows.loc[(0, "optimizer state")]
    assert row["difference (bytes)"] != 0
    assert row["difference (%)"] == pytest.approx(100 * row["difference (bytes)"] / row["predicted (bytes)"], abs=1e-4)
    # ZeRO-1 keeps no master shard: 0 predicted, 0 measured, a percentage of nothing is undefined, not 'None'.
    master = shown.set_index(["rank", "category"]).loc[(0, "master params (ZeRO-2 shards)")]
    assert master["predicted (bytes)"] == "0" and master["difference (%)"] == "–"
    assert "None" not in shown.to_string()
    assert COMPARE in charts_by_title(at)


def test_compare_table_writes_missing_and_undefined_cells_as_a_dash():
    rows = pd.DataFrame([
        {"rank": 0, "category": "params", "predicted_bytes": 1000, "measured_bytes": 1010, "difference_bytes": 10,
         "difference_pct": 1.0},
        {"rank": 0, "category": "master", "predicted_bytes": 0, "measured_bytes": 0, "difference_bytes": 0,
         "difference_pct": None},
        {"rank": 0, "category": "grads", "predicted_bytes": 1000, "measured_bytes": None, "difference_bytes": None,
         "difference_pct": None},
    ])
    shown = compare_table(rows)
    assert shown.to_dict("records") == [
        {"rank": 0, "category": "parameters", "predicted (bytes)": "1,000", "measured (bytes)": "1,010",
         "difference (bytes)": "10", "difference (%)": "1.0000"},
        {"rank": 0, "category": "master params (ZeRO-2 shards)", "predicted (bytes)": "0", "measured (bytes)": "0",
         "difference (bytes)": "0", "difference (%)": "–"},
        {"rank": 0, "category": "gradients", "predicted (bytes)": "1,000", "measured (bytes)": "–",
         "difference (bytes)": "–", "difference (%)": "–"},
    ]


def test_predicted_vs_measured_chart_uses_the_run_charts_category_colours():
    rows = pd.DataFrame(
        {"rank": 0, "category": c, "predicted_bytes": 8, "measured_bytes": 8, "difference_bytes": 0,
         "difference_pct": 0.0} for c in ("params", "master", "grads", "optimizer", "total")
    )
    scale = predicted_vs_measured_chart(rows).to_dict()["encoding"]["color"]["scale"]
    assert dict(zip(scale["domain"], scale["range"])) == {
        "parameters": "#4C78A8", "master params (ZeRO-2 shards)": CATEGORY_COLORS["master params (ZeRO-2 shards)"],
        "gradients": "#F58518", "optimizer state": "#E45756",
    }


def test_published_models_are_estimated_without_importing_torch(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys\nfrom streamlit.testing.v1 import AppTest\n"
        f"at = AppTest.from_file({PAGE!r}, default_timeout=60).run()\n"
        "at.radio(key='whatif_source').set_value('Parameter count').run()\n"
        "assert not at.exception, at.exception\n"
        "print('torch' in sys.modules)"
    )
    env = {**__import__("os").environ, "SHARDLAB_RUNS_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                            cwd=Path(PAGE).parents[2])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_memory_models_side_by_side_and_the_deepspeed_choice(runs):
    at = no_overheads(set_params(page(runs), "7.5B", 8))
    paper = list(table(at)["model states bytes"])
    at.radio(key="whatif_memory_model").set_value("deepspeed").run()
    deepspeed = list(table(at)["model states bytes"])
    assert paper[2] == 2 * 7_500_000_000 + 14 * 7_500_000_000 // 8  # the paper's ZeRO-2
    assert deepspeed[2] == 2 * 7_500_000_000 + 18 * 7_500_000_000 // 8  # DeepSpeed's (fp32 gradient partition)
    models = next(d.value for d in at.dataframe if "memory model" in d.value.columns)
    assert list(models["memory model"]) == ["ZeRO paper", "DeepSpeed runtime"]  # no shapes: no PyTorch row
    assert any("Memory model: DeepSpeed's runtime" in c.value for c in at.caption)


@pytest.mark.parametrize("text", ["1e19", "1e30", "2e15"])
def test_huge_parameter_counts_are_refused_in_one_line(runs, text):
    at = set_params(page(runs), text, 8)
    assert not at.exception and len(at.error) == 1 and "beyond 1e+15" in at.error[0].value


def test_too_many_gpus_are_refused(runs):
    at = page(runs)
    at.number_input(key="whatif_nodes").set_value(1000)
    at.number_input(key="whatif_ranks").set_value(1001).run()
    assert not at.exception and "the estimator stops at 1,000,000" in at.error[0].value


def test_small_bars_are_not_flattened_by_the_gpu_line(runs):
    at = no_overheads(page(runs))  # GPT-2 small on 8 GPUs: a few GiB against an 80 GiB A100
    frames = charts_by_title(at)[BAR]
    assert not any("capacity" in f.columns for f in frames)  # named in the subtitle instead of a far-off rule


def test_activations_predicted_beside_measured(runs):
    run = write_fixture_run(runs, "fixture-gpt", strategy="ddp", nproc=2, psi=8970)
    spec = {**json.loads((run / "spec.json").read_text()), "model": "gpt", "size": "tiny", "dataset": "text"}
    (run / "spec.json").write_text(json.dumps(spec))
    want = activations_for_spec(spec).total_bytes
    for rank in (0, 1):  # as the worker writes it: the last logged step's bytes saved for backward
        path = run / "metrics" / f"rank{rank}.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        records = [r | {"activation_bytes": int(want * 1.01)} if r["kind"] == "train" else r for r in records]
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    at = page(runs)
    at.radio(key="whatif_source").set_value("ShardLab model (exact)").run()
    at.selectbox(key="whatif_model").set_value("gpt").run()
    acts = next(d.value for d in at.dataframe
                if "predicted (bytes)" in d.value.columns and "category" not in d.value.columns)
    assert list(acts.columns) == ["rank", "predicted (bytes)", "measured (bytes)", "difference (%)"]
    assert list(acts["predicted (bytes)"]) == [f"{want:,}"] * 2
    assert list(acts["measured (bytes)"]) == [f"{int(want * 1.01):,}"] * 2
    assert [round(float(p), 1) for p in acts["difference (%)"]] == [1.0, 1.0]


def test_activations_table_writes_an_unmeasured_rank_as_a_dash():
    shown = activations_table(1000, [(0, 1010), (1, None)])
    assert shown.to_dict("records") == [
        {"rank": 0, "predicted (bytes)": "1,000", "measured (bytes)": "1,010", "difference (%)": "1.00"},
        {"rank": 1, "predicted (bytes)": "1,000", "measured (bytes)": "–", "difference (%)": "–"},
    ]
    assert activations_table(0, [(0, 5)])["difference (%)"].tolist() == ["–"]  # a percentage of nothing


@pytest.mark.parametrize("key, typed, says", [
    ("whatif_nodes", 0, "Choose 1 to 1,000,000 (got 0)."),
    ("whatif_ranks", 2_000_000, "Choose 1 to 1,000,000 (got 2,000,000)."),
    ("whatif_host_mem_gib", 0.0, "Choose 1 to 1,000,000 (got 0)."),
    ("whatif_prefetch_depth", 65, "Choose 0 to 64 (got 65)."),
    ("whatif_reserve_pct", 101, "Choose 0 to 100 (got 101)."),
])
def test_an_out_of_range_number_stays_as_typed_and_computes_nothing(runs, key, typed, says):
    """With min/max the browser kept the last valid value: 'Nodes 0' went on computing 1 node x 8 GPUs."""
    at = page(runs)
    assert table(at) is not None
    at.number_input(key=key).set_value(typed).run()
    assert not at.exception
    assert at.number_input(key=key).value == typed  # kept as typed
    assert not [d for d in at.dataframe if {"fits", "quantity"} & set(d.value.columns)]  # no estimate from a stale value
    messages = [e.value for e in at.error]
    assert says in messages
    assert any(m.startswith("Numbers out of range in the sidebar") for m in messages)


@pytest.mark.parametrize("nodes", [50_000, 100_000, 125_000])  # 400,000 / 800,000 / 1,000,000 GPUs: all valid
def test_a_valid_cluster_near_the_limit_draws_its_curve_up_to_the_limit(runs, nodes):
    """The curve went to 4N rounded to a power of two: 400,000 GPUs asked for 1,048,576 and blanked the page with a
    number nobody typed."""
    at = page(runs)
    at.number_input(key="whatif_nodes").set_value(nodes).run()
    assert not at.exception and not at.error
    assert table(at) is not None
    curve = pd.concat(charts_by_title(at)[LINE])
    assert curve["ranks"].max() <= MAX_RANKS and nodes * 8 in set(curve["ranks"])


def test_curve_ranks_stop_at_the_estimators_limit_and_keep_n():
    assert curve_ranks(8) == [2**k for k in range(11)]  # 1 ... 1,024
    assert curve_ranks(3000) == sorted({2**k for k in range(14)} | {3000})  # up to 4N = 12,000 -> 8,192
    assert curve_ranks(400_000)[-2:] == [400_000, 524_288]  # 4N = 1.6M is past the limit: cut there
    assert curve_ranks(MAX_RANKS)[-1] == MAX_RANKS and max(curve_ranks(MAX_RANKS)[:-1]) == 524_288


def _legends(spec: dict) -> list[dict]:
    """Every legend an Altair spec (layered or not) asks for."""
    layers = spec.get("layer", [spec])
    return [layer["encoding"]["color"].get("legend", {}) for layer in layers if "color" in layer.get("encoding", {})]


def test_stage_bars_keep_the_width_the_legend_sits_above_or_below():
    """With the legend on the right the 9 term names took over half a 1,280 px window's half-column."""
    terms = pd.DataFrame({"stage": "ZeRO-1", "term": ["parameters", "gradients", "framework/CUDA context"],
                          "bytes": [1, 2, 3]})
    for capacity in (None, 10, 80 * GIB):  # with the capacity rule and without
        legends = _legends(charts.stage_bar_chart(terms, capacity).to_dict())
        assert legends and all(legend.get("orient") in ("top", "bottom") for legend in legends)


def test_the_capacity_subtitle_names_what_each_chart_draws():
    terms = pd.DataFrame({"stage": "ZeRO-1", "term": ["parameters"], "bytes": [GIB]})
    curve = pd.DataFrame({"stage": "ZeRO-1", "ranks": [1, 2], "total_bytes": [2 * GIB, GIB]})
    bars = charts.stage_bar_chart(terms, 80 * GIB, "A100").to_dict()["title"]["subtitle"]
    lines = charts.ranks_line_chart(curve, 80 * GIB, "A100").to_dict()["title"]["subtitle"]
    assert "far above these bars" in bars[-1]
    assert "bars" not in lines[-1] and "far above every line" in lines[-1]


def test_the_gpus_axis_ends_at_the_largest_n_drawn():
    """A log axis niced to the next power of two labelled 400,000 GPUs' curve '1,048,576', past the limit."""
    curve = pd.DataFrame({"stage": "ZeRO-1", "ranks": curve_ranks(400_000), "total_bytes": GIB})
    spec = charts.ranks_line_chart(curve).to_dict()
    scale = spec["encoding"]["x"]["scale"]
    assert scale["domain"] == [1, 524_288] and scale["nice"] is False  # the curve's own ends
