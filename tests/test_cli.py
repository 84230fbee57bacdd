import json
import shlex
import subprocess
import sys

from engine.cli import main
from engine.spec import JobSpec


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True)


def test_torchrun_command_for_a_cluster_uses_c10d_rendezvous(tmp_path, capsys):
    spec_file = tmp_path / "spec.json"
    code = main(["torchrun-command", "--nnodes", "2", "--nproc", "8", "--global-batch", "128", "--strategy", "zero3",
                 "--node-rank", "1", "--rdzv-endpoint", "node0:29500", "--spec-out", str(spec_file)])
    assert code == 0
    words = shlex.split(capsys.readouterr().out.strip())
    assert words[:3] == ["python", "-m", "torch.distributed.run"]
    assert {"--nproc-per-node=8", "--nnodes=2", "--node-rank=1", "--rdzv-backend=c10d",
            "--rdzv-endpoint=node0:29500"} <= set(words)
    assert words[-3:] == ["-m", "engine.worker", str(spec_file)]
    assert JobSpec.load(spec_file) == JobSpec(nnodes=2, nproc=8, global_batch=128, strategy="zero3")


def test_multi_node_without_an_endpoint_is_refused(capsys):
    assert main(["torchrun-command", "--nnodes", "2"]) == 2
    assert "--rdzv-endpoint" in capsys.readouterr().err


def test_train_refuses_a_bad_spec_with_a_clear_message_and_starts_nothing(tmp_path):
    result = run_cli("train", "--nproc", "4", "--batch", "30", "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 2
    assert "global batch 30 is not divisible by 4 ranks" in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_summary_of_an_unknown_run_is_a_clear_error(tmp_path):
    result = run_cli("summary", "nope", "--runs-dir", str(tmp_path))
    assert result.returncode == 2 and "no run 'nope'" in result.stderr


def test_estimate_json_has_per_rank_totals():
    result = run_cli("estimate", "--params", "7.5e9", "--ranks", "64", "--stage", "3", "--json")
    assert result.returncode == 0, result.stderr
    assert "total_bytes" in json.dumps(json.loads(result.stdout))


def test_a_closed_pipe_is_quiet(tmp_path):
    from tests.app_fixtures import write_fixture_run

    for i in range(200):
        write_fixture_run(tmp_path, f"run-{i:03d}", steps=1)
    process = subprocess.Popen([sys.executable, "-m", "engine", "runs", "--runs-dir", str(tmp_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline().startswith(b"run-199")
    process.stdout.close()  # what `| head -1` does
    assert process.stderr.read() == b"" and process.wait(timeout=60) == 0


def test_runs_json_lists_run_id_and_state(tmp_path):
    from tests.app_fixtures import write_fixture_run

    write_fixture_run(tmp_path, "a-run")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "spec.json").write_text("[]")
    result = run_cli("runs", "--json", "--runs-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    listed = {r["run_id"]: r for r in json.loads(result.stdout)}
    assert listed["a-run"]["state"] == "succeeded"
    assert listed["broken"]["state"] == "unreadable" and "spec.json holds list" in listed["broken"]["error"]
