import socket

import pytest
import torch
import torch.distributed as dist

from engine.comm import CommCounter, wire_bytes_estimate


@pytest.fixture
def world_of_one():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_counts_calls_and_payload_bytes_per_collective(world_of_one):
    original = dist.all_reduce
    counter = CommCounter(world_size=1).install()
    try:
        dist.all_reduce(torch.zeros(10))
        dist.all_reduce(tensor=torch.zeros(5, dtype=torch.float64))  # keyword arguments too
        dist.broadcast(torch.zeros(3), src=0)
        dist.all_gather_into_tensor(torch.zeros(8), torch.zeros(8))
        dist.reduce_scatter_tensor(torch.zeros(4), torch.zeros(4))
        with counter.paused():
            dist.all_reduce(torch.zeros(1000))  # bookkeeping is not counted
        record = counter.step_metrics()
    finally:
        counter.uninstall()
    assert record["comm/all_reduce/calls"] == 2 and record["comm/all_reduce/bytes"] == 10 * 4 + 5 * 8
    assert record["comm/broadcast/bytes"] == 12
    assert record["comm/all_gather/bytes"] == 32 and record["comm/reduce_scatter/bytes"] == 16
    assert record["comm/payload_bytes"] == 40 + 40 + 12 + 32 + 16
    assert dist.all_reduce is original  # uninstalled


def test_a_collective_built_on_another_counts_once(world_of_one):
    counter = CommCounter(world_size=1).install()
    try:
        # all_gather_into_tensor may be implemented through all_gather_single: still one call.
        dist.all_gather_into_tensor(torch.zeros(6), torch.zeros(6))
        assert counter.step_metrics()["comm/all_gather/calls"] == 1
        counter.reset_step()
        assert counter.step_metrics()["comm/payload_bytes"] == 0
        assert counter.step_metrics()["comm/cum_payload_bytes"] == 24
    finally:
        counter.uninstall()


@pytest.mark.parametrize(
    "op, n, expected",
    [("all_reduce", 4, 2 * 3 / 4 * 1000), ("all_gather", 4, 3 / 4 * 1000), ("reduce_scatter", 2, 500),
     ("broadcast", 4, 750), ("all_reduce", 1, 0)],
)
def test_ring_wire_estimate(op, n, expected):
    assert wire_bytes_estimate(op, 1000, n) == pytest.approx(expected)
