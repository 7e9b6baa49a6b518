import os
import threading
from contextlib import ExitStack

import pytest

from components.devices import CPUS_ENV, DevicePool, pin_to_cpus, usable_cpus, visible_gpus


def test_cuda_visible_devices_decides(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


def test_no_driver_means_no_gpu(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert visible_gpus() == []


def test_pool_never_lends_one_gpu_twice_at_once():
    pool = DevicePool.for_machine(["0", "1"], parallel=4, cpus=[0, 1])
    held: list[str] = []
    peak = []
    lock = threading.Lock()

    def work() -> None:
        with pool.lease() as env:
            assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
            with lock:
                assert env["CUDA_VISIBLE_DEVICES"] not in held
                held.append(env["CUDA_VISIBLE_DEVICES"])
                peak.append(len(held))
            threading.Event().wait(0.02)
            with lock:
                held.remove(env["CUDA_VISIBLE_DEVICES"])

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(peak) == 2


@pytest.mark.parametrize(
    ("parallel", "cpus", "shares"),
    [
        (1, [0, 1, 2, 3], ["0,1,2,3"]),
        (2, [0, 1, 2, 3], ["0,2", "1,3"]),
        (3, [4, 5], ["4", "5", "4"]),
    ],
)
def test_without_gpus_each_slot_gets_its_share_of_the_cores_and_no_gpu(parallel, cpus, shares):
    pool = DevicePool.for_machine([], parallel, cpus)
    assert pool.size == parallel
    with ExitStack() as stack:
        slots = [stack.enter_context(pool.lease()) for _ in range(parallel)]
    assert [s[CPUS_ENV] for s in slots] == shares
    assert all(s["CUDA_VISIBLE_DEVICES"] == "" for s in slots)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_a_process_pins_itself_to_the_cpus_it_was_lent():
    before = usable_cpus()
    try:
        pin_to_cpus({CPUS_ENV: str(before[-1])})
        assert usable_cpus() == [before[-1]]
        pin_to_cpus({})
        assert usable_cpus() == [before[-1]]
    finally:
        os.sched_setaffinity(0, before)
