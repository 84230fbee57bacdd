"""Serving safety whatever the working directory: the settings streamlit really uses, the address it really
binds, and the entry page's refusal when an unsafe setting was not chosen on purpose."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from streamlit import config
from streamlit.testing.v1 import AppTest

from app.serving import ALLOW_REMOTE_ENV, EXPLICIT_SOURCES, SAFE, serving_problems
from tests.test_browser import free_port, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
ENTRY = ROOT / "app" / "shardlab.py"
SAFE_VALUES = {"server.address": "127.0.0.1", "browser.gatherUsageStats": False, "server.enableCORS": True,
               "server.enableXsrfProtection": True, "server.maxUploadSize": 5, "client.showErrorDetails": "none"}


def problems(changes: dict, where: str = "<default>", environ: dict | None = None) -> list[str]:
    values = {**SAFE_VALUES, **changes}
    return serving_problems(values.get, lambda option: where if option in changes else "app/.streamlit/config.toml",
                            environ or {})


def test_the_safe_settings_pass():
    assert problems({}) == []


@pytest.mark.parametrize("option, value", [("server.address", ""), ("server.address", "0.0.0.0"),
                                           ("browser.gatherUsageStats", True), ("server.enableCORS", False),
                                           ("server.enableXsrfProtection", False), ("server.maxUploadSize", 200),
                                           ("client.showErrorDetails", "full")])
def test_an_unsafe_setting_nobody_chose_is_refused(option, value):
    (problem,) = problems({option: value}, where="/home/someone/.streamlit/config.toml")
    assert option in problem or "every network interface" in problem or "0.0.0.0" in problem


def test_serving_a_classroom_needs_an_explicit_choice():
    assert problems({"server.address": "0.0.0.0"}, where=EXPLICIT_SOURCES[0]) == []  # --server.address 0.0.0.0
    assert problems({"server.address": "0.0.0.0"}, environ={ALLOW_REMOTE_ENV: "1"}) == []
    assert problems({"server.address": "0.0.0.0"}, environ={ALLOW_REMOTE_ENV: "yes please"})


def test_the_entry_page_refuses_to_serve_when_an_unsafe_setting_slipped_in():
    before = config.get_option("server.address"), config.get_where_defined("server.address")
    config.set_option("server.address", "0.0.0.0", where_defined="<default>")
    try:
        at = AppTest.from_file(str(ENTRY), default_timeout=30).run()
    finally:
        config.set_option("server.address", before[0], where_defined=before[1])
    assert not at.exception
    (error,) = at.error
    assert error.value.startswith("ShardLab refuses to serve these pages: the server listens on 0.0.0.0")
    assert "--server.address 0.0.0.0" in error.value and not at.title  # no page was drawn


def test_streamlit_reads_the_safe_settings_from_any_working_directory(tmp_path):
    """config.toml beside the entry script wins over ~/.streamlit and over $CWD/.streamlit."""
    home = tmp_path / "home"
    (home / ".streamlit").mkdir(parents=True)
    (home / ".streamlit" / "config.toml").write_text('[server]\naddress = "0.0.0.0"\n[browser]\ngatherUsageStats = true\n')
    code = ("import json; from streamlit import config; config._main_script_path = %r; "
            "print(json.dumps({k: config.get_option(k) for k in %r}))") % (str(ENTRY), list(SAFE_VALUES))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "HOME": str(home)},
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == SAFE_VALUES


def test_started_from_another_directory_it_binds_only_this_machine(tmp_path):
    port = free_port()
    env = {**os.environ, "HOME": str(tmp_path)}
    for name in [k for k in env if k.startswith("STREAMLIT_")]:
        env.pop(name)
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ENTRY), "--server.port", str(port),
                               "--server.headless", "true"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", server)
        listening = {c.laddr.ip for c in psutil.Process(server.pid).net_connections("inet") if c.status == psutil.CONN_LISTEN}
        assert listening == {"127.0.0.1"}
    finally:
        server.terminate()
        server.wait(timeout=30)
