"""Serving safety: the settings ShardLab is served with, checked against streamlit's effective config.

app/.streamlit/config.toml sets them, and streamlit reads that file beside the entry script whatever the
working directory. A command-line flag or a STREAMLIT_* environment variable can still override any of them:
that counts as the operator's explicit choice. Anything unsafe that nobody chose (the file missing, an
older streamlit that ignores it) makes the entry page refuse to serve and say how to start it safely.
No streamlit import here: the rules are plain functions of (option -> value, option -> where defined).
"""

from __future__ import annotations

from typing import Callable, Mapping

LOOPBACK = ("127.0.0.1", "::1", "localhost")
ALLOW_REMOTE_ENV = "SHARDLAB_ALLOW_REMOTE"  # =1: serve beyond this machine on purpose
MAX_UPLOAD_MB = 5
# Where streamlit says an option came from when a flag or an environment variable set it.
EXPLICIT_SOURCES = ("command-line argument or environment variable", "environment variable")
SAFE = {  # option -> (is it safe?, what it should be)
    "browser.gatherUsageStats": (lambda v: v is False, "false: no usage statistics leave the machine"),
    "server.enableCORS": (lambda v: v is True, "true"),
    "server.enableXsrfProtection": (lambda v: v is True, "true"),
    "server.maxUploadSize": (lambda v: isinstance(v, (int, float)) and 0 < v <= MAX_UPLOAD_MB, f"at most {MAX_UPLOAD_MB} MB"),
    "client.showErrorDetails": (lambda v: v in ("none", "type"), '"none": tracebacks go to the server log, not to browsers'),
}
HOW_TO_START = (
    "Start ShardLab with `python3 -m streamlit run app/shardlab.py` (app/.streamlit/config.toml binds 127.0.0.1 "
    f"and sets the rest). To serve a classroom on purpose, add `--server.address 0.0.0.0` or set {ALLOW_REMOTE_ENV}=1."
)


def serving_problems(get_option: Callable[[str], object], where_defined: Callable[[str], str],
                     environ: Mapping[str, str]) -> list[str]:
    """Every unsafe setting nobody chose explicitly, in words; empty when ShardLab may serve."""
    problems = []
    address = str(get_option("server.address") or "")
    chosen = where_defined("server.address") in EXPLICIT_SOURCES or environ.get(ALLOW_REMOTE_ENV) == "1"
    if address not in LOOPBACK and not chosen:
        problems.append(f"the server listens on {address or 'every network interface'}, not only on this machine "
                        f"(server.address, set in {where_defined('server.address')})")
    for option, (is_safe, should_be) in SAFE.items():
        value = get_option(option)
        if not is_safe(value) and where_defined(option) not in EXPLICIT_SOURCES:
            problems.append(f"{option} is {value!r} (set in {where_defined(option)}); it should be {should_be}")
    return problems
