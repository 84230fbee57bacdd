import json

import pytest

from engine.spec import JobSpec, SpecError, check_resources


def test_defaults_are_valid_and_round_trip_through_one_json_file(tmp_path):
    spec = JobSpec(strategy="zero3", nproc=4, global_batch=32)
    spec.save(tmp_path / "spec.json")
    assert JobSpec.load(tmp_path / "spec.json") == spec
    assert json.loads((tmp_path / "spec.json").read_text())["strategy"] == "zero3"


def test_spec_is_frozen():
    with pytest.raises(AttributeError):
        JobSpec().steps = 3


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(global_batch=30, nproc=4), "global batch 30 is not divisible by 4 ranks"),
        (dict(strategy="zero4"), "unknown strategy 'zero4' (choose ddp, zero1, zero2, zero3)"),
        (dict(model="resnet"), "unknown model 'resnet'"),
        (dict(size="huge"), "unknown size for model mlp 'huge'"),
        (dict(model="gpt", dataset="digits"), "model gpt needs text data but dataset digits is image"),
        (dict(nproc=0), "nproc must be a whole number of at least 1"),
        (dict(steps=-5), "steps must be a whole number of at least 1"),
        (dict(lr=0), "learning rate must be between 0 and 10"),
        (dict(optimizer="lbfgs"), "unknown optimizer 'lbfgs'"),
        (dict(nproc=65), "65 CPU ranks is too many"),
        (dict(global_batch=2048), "global batch 2048 is larger than the 1,438 training samples of digits"),
    ],
)
def test_invalid_specs_fail_with_a_message_a_student_understands(changes, message):
    with pytest.raises(SpecError) as error:
        JobSpec(**changes)
    assert message in str(error.value)


def test_unknown_fields_in_a_spec_file_are_refused():
    with pytest.raises(SpecError, match="unknown spec field"):
        JobSpec.from_dict({"strategy": "ddp", "ranks": 4})


def test_gpu_count_is_checked_against_the_ranks_asked_for():
    with pytest.raises(SpecError, match="4 ranks requested but 1 GPU found"):
        check_resources(JobSpec(device="cuda", nproc=4, global_batch=64), gpus_found=1)
    with pytest.raises(SpecError, match="no GPU found"):
        check_resources(JobSpec(device="cuda", nproc=1), gpus_found=0)
    check_resources(JobSpec(device="cuda", nproc=2), gpus_found=2)
    check_resources(JobSpec(device="cpu", nproc=8, global_batch=64), gpus_found=0)


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(seed=1e30), "seed"), (dict(seed="x"), "seed"), (dict(seed=2**64), "seed"), (dict(seed=-1), "seed"),
        (dict(instrument="no"), "instrument"), (dict(instrument=1), "instrument"),
        (dict(log_interval="5"), "log_interval"), (dict(eval_interval="10"), "eval_interval"),
        (dict(nproc=True), "nproc"), (dict(steps=5.0), "steps"), (dict(lr=float("nan")), "lr"),
        (dict(lr=float("inf")), "lr"), (dict(lr="0.1"), "lr"), (dict(lr=True), "lr"), (dict(strategy=3), "strategy"),
        (dict(model=["mlp"]), "model"), (dict(stall_after_s=0), "stall_after_s"),
        (dict(collective_timeout_s=1), "collective_timeout_s"), (dict(data_dir=None), "data_dir"),
    ],
)
def test_wrong_types_are_refused_naming_the_field(changes, field):
    with pytest.raises(SpecError) as error:
        JobSpec(**changes)
    assert error.value.field == field, str(error.value)


@pytest.mark.parametrize("content, message", [
    ("[]", "holds list"), ("null", "holds null"), ("[" * 5000 + "]" * 5000, "nested deeper than 32 levels"),
    (" " * 70_000 + "{}", "at most 65,536 are read"), ('{"seed": ', "not valid JSON"), (b"\xff\xfe", "not UTF-8"),
])
def test_spec_files_are_capped_and_depth_limited_before_parsing(tmp_path, content, message):
    path = tmp_path / "spec.json"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(SpecError, match=message):
        JobSpec.load(path)


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/urandom", "/tmp"])
def test_a_spec_path_that_is_not_a_small_regular_file_is_refused(path):
    with pytest.raises(SpecError):
        JobSpec.load(path)
