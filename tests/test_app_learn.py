"""The Learn page and the entry point's navigation, through AppTest."""

import tomllib
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.app_fixtures import charts_by_title

ROOT = Path(__file__).resolve().parent.parent


def test_learn_reproduces_the_zero_papers_figure_1():
    at = AppTest.from_file(str(ROOT / "app" / "views" / "learn.py"), default_timeout=30).run()
    assert not at.exception
    table = at.dataframe[0].value.set_index("stage")
    assert table["GB per rank (10^9 bytes)"].to_dict() == {"DDP": 120.0, "ZeRO-1": 31.41, "ZeRO-2": 16.64, "ZeRO-3": 1.88}
    assert table["traffic per step"].to_dict() == {"DDP": "2Ψ", "ZeRO-1": "2Ψ", "ZeRO-2": "2Ψ", "ZeRO-3": "3Ψ"}
    at.number_input(key="learn_n").set_value(1).run()
    one_rank = at.dataframe[0].value["GB per rank (10^9 bytes)"]
    assert one_rank.nunique() == 1  # with one rank there is nothing to shard


def test_learn_map_labels_shards_from_the_estimator(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARDLAB_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "app" / "views" / "learn.py"), default_timeout=30).run()
    at.number_input(key="learn_map_ranks").set_value(3).run()
    (grid,) = charts_by_title(at)["Who holds what after forward"]
    assert set(grid["rank"]) == {"rank 0", "rank 1", "rank 2"}
    params = grid[grid["category"] == "parameters"]
    assert set(params["title"]) == {"shard 1 of 3", "shard 2 of 3", "shard 3 of 3"}  # ZeRO-3: every tensor sharded
    at.segmented_control(key="map_strategy").set_value("zero1").run()
    (grid,) = charts_by_title(at)["Who holds what after forward"]
    assert set(grid[grid["category"] == "optimizer state"]["title"]) == {"owner"}  # whole tensors, uneven shares
    text = " ".join(m.value for m in at.markdown)
    assert "converges faster" in text and "Compare page" in text  # no compare group yet: where to find evidence
    table = at.dataframe[0].value.set_index("stage")
    assert table.loc["ZeRO-1", "what PyTorch sends here"] == "all-reduce of Ψ (2Ψ) + broadcast of Ψ (Ψ) = 3Ψ"


def test_misconceptions_link_to_the_latest_compare(tmp_path, monkeypatch):
    from engine import runstore

    monkeypatch.setenv("SHARDLAB_RUNS_DIR", str(tmp_path))
    group = runstore.write_group({"ddp": "x"}, tmp_path)
    at = AppTest.from_file(str(ROOT / "app" / "views" / "learn.py"), default_timeout=30).run()
    text = " ".join(m.value for m in at.markdown)
    assert f"(compare?group={group}#loss)" in text and f"(compare?group={group}#traffic)" in text


def test_entry_point_lists_the_four_pages(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARDLAB_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "app" / "shardlab.py"), default_timeout=30).run()
    assert not at.exception
    assert at.title[0].value == "Train"  # the default page
    at.switch_page("views/learn.py").run()
    assert at.title[0].value.startswith("Learn")
    at.switch_page("views/runs.py").run()
    assert at.title[0].value == "Runs"


def test_streamlit_config_is_local_and_private():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    assert config["browser"]["gatherUsageStats"] is False
    assert 0 < config["server"]["maxUploadSize"] <= 10
    assert config["server"]["enableXsrfProtection"] is True


@pytest.mark.parametrize("module", ["app.charts", "app.run_data", "app.state", "app.train_form", "app.run_view"])
def test_app_modules_do_not_import_torch(module):
    import subprocess
    import sys

    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_gpts_sharding_map_wraps_within_the_window(tmp_path, monkeypatch):
    """gpt tiny has 29 tensors: at 120 px each the map ran 3,626 px wide and the page scrolled sideways."""
    import json

    from app.lesson_charts import MAP_TENSORS_PER_BAND

    monkeypatch.setenv("SHARDLAB_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "app" / "views" / "learn.py"), default_timeout=30).run()
    at.selectbox(key="learn_map_model").set_value("gpt").run()
    assert not at.exception
    (grid,) = charts_by_title(at)["Who holds what after forward"]
    (element,) = [e for e in at.get("vega_lite_chart") if "Who holds what" in e.proto.spec]
    bands = json.loads(element.proto.spec)["vconcat"]
    shown = [t for band in bands for t in band["transform"][0]["filter"]["oneOf"]]
    assert all(len(band["transform"][0]["filter"]["oneOf"]) <= MAP_TENSORS_PER_BAND for band in bands)
    assert shown == list(dict.fromkeys(grid["tensor"])) and len(shown) == 29  # every tensor, once, in order


def test_a_long_collectives_lane_narrows_to_fit():
    from app.lesson_charts import TIMELINE_WIDTH_PX, collectives_frame, timeline_step_px

    few = collectives_frame({"ddp": [{"op": "all_reduce", "bytes": 8, "phase": "backward"}] * 3})
    many = collectives_frame({"zero1": [{"op": "broadcast", "bytes": 8, "phase": "optimizer"}] * 149})
    assert timeline_step_px(few) == 44
    assert 3 <= timeline_step_px(many) and 149 * timeline_step_px(many) <= TIMELINE_WIDTH_PX


@pytest.mark.parametrize("key, typed, says", [
    ("learn_psi", 1e12, "Choose 0.001 to 1,000,000 billion (got 1e+12)."),
    ("learn_psi", 1e300, "Choose 0.001 to 1,000,000 billion (got 1e+300)."),
    ("learn_psi", 0.0, "Choose 0.001 to 1,000,000 billion (got 0)."),
    ("learn_n", 10**8, "Choose 1 to 1,000,000 (got 100,000,000)."),
    ("learn_map_ranks", 9, "Choose 1 to 8 (got 9)."),
])
def test_an_out_of_range_number_is_refused_not_crashed_or_kept(tmp_path, monkeypatch, key, typed, says):
    """Ψ = 1e12 billion and N = 1e8 raised into the page; with min/max a typed 9 ranks silently stayed 2."""
    monkeypatch.setenv("SHARDLAB_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "app" / "views" / "learn.py"), default_timeout=30).run()
    at.number_input(key=key).set_value(typed).run()
    assert not at.exception
    assert at.number_input(key=key).value == typed
    assert [e.value for e in at.error] == [says]


def test_each_map_cell_states_its_bytes_in_its_own_unit():
    """On one shared unit a 1 KiB bias beside a 0.5 MiB weight read '0.0 MiB'."""
    from app.lesson_charts import sharding_frame
    from engine.sharding import map_for_phase

    spec = {"model": "mlp", "size": "small", "dataset": "digits", "nproc": 2, "strategy": "zero3",
            "precision": "fp32", "optimizer": "adam"}
    cells = sharding_frame(map_for_phase(spec, "forward"), "forward")
    assert not cells["amount"].str.startswith("0.0 ").any()
    bias = cells[(cells["tensor"] == "hidden.0.bias") & (cells["category"] == "parameters")]["amount"]
    assert set(bias) == {"1.00 KiB"}  # 256 fp32 rows per rank


def test_the_stage_table_fits_a_1280_px_window(tmp_path, monkeypatch):
    """Its last column ('measured in your last compare') ran past the main column's 820 px."""
    import json

    monkeypatch.setenv("SHARDLAB_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "app" / "views" / "learn.py"), default_timeout=30).run()
    table = at.dataframe[0]
    config = {name: c for name, c in json.loads(table.proto.columns).items() if name != "_index"}  # hidden index
    assert set(config) == set(table.value.columns)  # every column has a width
    assert sum(c["width"] for c in config.values()) <= 820
    # Chromium draws this column's text at about 5.8 px a character (37 characters took 212 px at 1,280 px), plus
    # 16 px of padding: at 222 px the ZeRO-1 row was cut off at 'broadcast of Ψ'.
    sends = table.value["what PyTorch sends here"]
    assert config["what PyTorch sends here"]["width"] >= 5.8 * sends.str.len().max() + 16


SECTIONS = ["Who holds what, when", "Memory and traffic per rank", "Common misconceptions"]


@pytest.mark.parametrize("key, typed, broken", [
    ("learn_map_ranks", 0, "Who holds what, when"),
    ("learn_psi", 0.0, "Memory and traffic per rank"),
    ("learn_n", 0, "Memory and traffic per rank"),
])
def test_a_bad_number_stops_only_its_own_section(tmp_path, monkeypatch, key, typed, broken):
    """Ranks 0 blanked every section below it (st.stop), the misconceptions included."""
    monkeypatch.setenv("SHARDLAB_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "app" / "views" / "learn.py"), default_timeout=30).run()
    at.number_input(key=key).set_value(typed).run()
    assert not at.exception
    assert len(at.error) == 1 and at.number_input(key=key).value == typed  # its message; the typed value kept
    assert [s.value for s in at.subheader] == SECTIONS
    assert "converges faster" in " ".join(m.value for m in at.markdown)  # the misconceptions still render
    map_drawn = "Who holds what after forward" in charts_by_title(at)
    table_drawn = len(at.dataframe) == 1
    assert (map_drawn, table_drawn) == (broken != SECTIONS[0], broken != SECTIONS[1])


def test_what_pytorch_sends_reads_as_right_arithmetic(tmp_path, monkeypatch):
    """'all-reduce Ψ = 2Ψ' and 'all-reduce Ψ + broadcast Ψ = 3Ψ' read as wrong sums: say the all-reduce counts twice."""
    monkeypatch.setenv("SHARDLAB_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "app" / "views" / "learn.py"), default_timeout=30).run()
    sends = at.dataframe[0].value.set_index("stage")["what PyTorch sends here"].to_dict()
    assert sends == {
        "DDP": "all-reduce of Ψ (counted twice: 2Ψ)",
        "ZeRO-1": "all-reduce of Ψ (2Ψ) + broadcast of Ψ (Ψ) = 3Ψ",
        "ZeRO-2": "reduce-scatter of Ψ + all-gather of Ψ = 2Ψ",
        "ZeRO-3": "2 all-gathers of Ψ + reduce-scatter of Ψ = 3Ψ",
    }


def test_a_small_psi_is_shown_as_typed_not_rounded_to_two_decimals():
    """Streamlit's default float format "%0.2f" showed a typed 0.004 as "0.00" while the chart used 0.004."""
    at = AppTest.from_file(str(ROOT / "app" / "views" / "learn.py"), default_timeout=30).run()
    field = at.number_input(key="learn_psi")
    assert field.proto.format == "%g" and "%g" % 0.004 == "0.004"
