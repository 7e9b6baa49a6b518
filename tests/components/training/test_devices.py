import os
from contextlib import ExitStack

import pytest

from components.config import slowest_first
from components.training.devices import (
    CPUS_ENV,
    DevicePool,
    pin_to_cpus,
    processes_per_gpu,
    usable_cpus,
    visible_gpus,
)
from components.training.runtime import GPU_MEMORY_ENV


def test_cuda_visible_devices_decides(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


def test_no_driver_means_no_gpu(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert visible_gpus() == []


def test_pool_lends_each_whole_gpu_once_and_then_waits():
    pool = DevicePool.for_machine(["0", "1"], parallel=4, cpus=[0, 1])
    assert pool.size == 2
    with ExitStack() as stack:
        slots = [stack.enter_context(pool.lease()) for _ in range(2)]
        assert sorted(s["CUDA_VISIBLE_DEVICES"] for s in slots) == ["0", "1"]
        assert all(s["TF_FORCE_GPU_ALLOW_GROWTH"] == "true" for s in slots)
        assert pool.available == 0  # a third lease would wait
    assert pool.available == 2


def test_a_fake_inventory_of_two_cards_is_packed_with_capped_processes():
    memory = {"0": 143_771, "1": 143_771}  # two H200s, as nvidia-smi reports them (MiB)
    per_gpu = processes_per_gpu("auto", memory["0"], backbones=7)
    assert per_gpu == 7  # 90% of 140 GiB holds 12 processes of 10 GiB; 7 backbones
    pool = DevicePool.for_machine(["0", "1"], 1, [0], per_gpu=per_gpu, memory_mb=memory)
    assert pool.size == 14
    with ExitStack() as stack:
        slots = [stack.enter_context(pool.lease()) for _ in range(pool.size)]
    assert [s["CUDA_VISIBLE_DEVICES"] for s in slots[:4]] == ["0", "1", "0", "1"]  # spread
    for gpu in ("0", "1"):
        on_card = [s for s in slots if s["CUDA_VISIBLE_DEVICES"] == gpu]
        assert len(on_card) == 7
        assert sum(float(s["XLA_PYTHON_CLIENT_MEM_FRACTION"]) for s in on_card) < 1.0
        assert sum(int(s[GPU_MEMORY_ENV]) for s in on_card) < memory[gpu]
        assert all("TF_FORCE_GPU_ALLOW_GROWTH" not in s for s in on_card)


@pytest.mark.parametrize(
    ("setting", "memory_mb", "expected"),
    [
        ("auto", 16_384, 1),  # a 16 GB card holds one process
        ("auto", 24_576, 2),
        ("auto", 81_920, 7),  # 80 GB: capped by the number of backbones
        ("auto", None, 1),  # memory unknown: one each, as before
        (3, 16_384, 3),  # a number is taken as it is
    ],
)
def test_processes_per_gpu_follow_the_card_memory(setting, memory_mb, expected):
    assert processes_per_gpu(setting, memory_mb, backbones=7) == expected


def test_the_slowest_backbones_start_first():
    assert slowest_first(["VGG16", "MobileNet", "DenseNet169", "Xception"]) == [
        "DenseNet169", "Xception", "MobileNet", "VGG16",
    ]  # fmt: skip


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
