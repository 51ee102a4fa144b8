"""StageClock: seconds and calls per stage, on the host clock or (on a GPU) with CUDA events."""

from __future__ import annotations

import time

import pytest
import torch

from sdrt.runtime.timing import StageClock


def test_host_clock_sums_stages_and_counts_calls():
    syncs = []
    clock = StageClock(sync=lambda: syncs.append(1))
    assert not clock.uses_cuda_events
    with clock.stage("outer"):
        for _ in range(3):
            with clock.stage("inner"):
                time.sleep(0.01)
    seconds = clock.seconds
    assert clock.calls == {"inner": 3, "outer": 1}
    assert 0.03 <= seconds["inner"] <= seconds["outer"]
    assert len(syncs) == 8  # before every reading: two per stage
    clock.reset()
    assert clock.seconds == {} and clock.calls == {}


def test_start_stop_misuse_is_an_error():
    clock = StageClock(device="cpu")  # a CPU device keeps the host clock
    assert not clock.uses_cuda_events
    clock.start("a")
    assert clock.is_open("a")
    with pytest.raises(ValueError, match="stage 'a' is already open"):
        clock.start("a")
    clock.stop("a")
    with pytest.raises(ValueError, match="stage 'a' is not open"):
        clock.stop("a")


@pytest.mark.gpu
def test_cuda_events_time_queued_work_without_waiting():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU and a CUDA build of torch; this machine has neither")
    clock = StageClock(sync=lambda: pytest.fail("events need no sync"), device="cuda")
    assert clock.uses_cuda_events
    a = torch.randn(2048, 2048, device="cuda")
    with clock.stage("matmul"):
        for _ in range(20):
            a = a @ a / 2048
    seconds = clock.seconds  # synchronizes on the events
    assert seconds["matmul"] > 0 and clock.calls["matmul"] == 1
