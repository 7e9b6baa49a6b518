import contextlib

import pytest

from components.config import TrainingConfig
from components.training.devices import CPUS_ENV, DevicePool
from components.training.runtime import GPU_MEMORY_ENV
from components.training.schedule import (
    Job,
    Machine,
    device_pool,
    parallelism,
    per_gpu,
    ray_gpus_per_task,
    training_jobs,
)

NAMES = ("VGG16", "MobileNet", "DenseNet169")
CPU = Machine(cpus=(0, 1, 2, 3))
TWO_H100 = Machine(gpus=("0", "1"), memory_mb={"0": 81559, "1": 81559}, cpus=(0, 1))


def _slots(pool: DevicePool) -> list[dict[str, str]]:
    """Every slot of the pool, each leased once."""
    with contextlib.ExitStack() as leases:
        return [leases.enter_context(pool.lease()) for _ in range(pool.size)]


def test_on_a_cpu_the_params_order_stands_one_at_a_time_on_all_cores():
    training = TrainingConfig(backbones=NAMES)
    assert training_jobs(NAMES, [], CPU) == [Job(n, n) for n in NAMES]
    assert parallelism(training, CPU) == 1
    (slot,) = _slots(device_pool(training, CPU, len(NAMES)))
    assert slot == {"CUDA_VISIBLE_DEVICES": "", CPUS_ENV: "0,1,2,3"}


def test_max_parallel_splits_the_cpu_cores_between_the_processes():
    training = TrainingConfig(backbones=NAMES, max_parallel=2)
    assert parallelism(training, CPU) == 2
    slots = _slots(device_pool(training, CPU, len(NAMES)))
    assert [s[CPUS_ENV] for s in slots] == ["0,2", "1,3"]
    assert all(s["CUDA_VISIBLE_DEVICES"] == "" for s in slots)


def test_on_gpus_the_slowest_start_first_and_share_a_card_by_its_memory():
    training = TrainingConfig(backbones=NAMES)
    assert [j.backbone for j in training_jobs(NAMES, [], TWO_H100)] == [
        "DenseNet169",
        "MobileNet",
        "VGG16",
    ]
    # 0.9 of 81559 MiB at 10 GiB a process fits 7, but never more than the backbones
    assert per_gpu(training, TWO_H100, len(NAMES)) == 3
    assert parallelism(training, TWO_H100) == 6
    slots = _slots(device_pool(training, TWO_H100, len(NAMES)))
    assert sorted(s["CUDA_VISIBLE_DEVICES"] for s in slots) == ["0", "0", "0", "1", "1", "1"]
    assert {s[GPU_MEMORY_ENV] for s in slots} == {str(int(81559 * 0.9 / 3))}


def test_one_process_per_card_grows_into_it():
    training = TrainingConfig(backbones=NAMES, processes_per_gpu=1)
    assert parallelism(training, TWO_H100) == 2
    slots = _slots(device_pool(training, TWO_H100, len(NAMES)))
    assert slots == [
        {"CUDA_VISIBLE_DEVICES": g, "TF_FORCE_GPU_ALLOW_GROWTH": "true"} for g in ("0", "1")
    ]


def test_a_gpu_of_unknown_memory_takes_one_process():
    machine = Machine(gpus=("0",), cpus=(0,))
    assert per_gpu(TrainingConfig(backbones=NAMES), machine, len(NAMES)) == 1


def test_every_fold_of_a_backbone_runs_before_the_next_backbone():
    folds = [(0, "models/fold-0/split.csv"), (1, "models/fold-1/split.csv")]
    jobs = training_jobs(["VGG16", "MobileNet"], folds, CPU)
    assert [(j.key, j.backbone, j.fold) for j in jobs] == [
        ("fold-0/VGG16", "VGG16", folds[0]),
        ("fold-1/VGG16", "VGG16", folds[1]),
        ("fold-0/MobileNet", "MobileNet", folds[0]),
        ("fold-1/MobileNet", "MobileNet", folds[1]),
    ]


@pytest.mark.parametrize(
    ("executor", "machine", "expected"),
    [("ray", TWO_H100, 1), ("ray", CPU, 0), ("local", TWO_H100, 0)],
)
def test_ray_is_asked_for_one_gpu_per_task_only_where_gpus_exist(executor, machine, expected):
    assert ray_gpus_per_task(TrainingConfig(executor=executor), machine) == expected


def test_a_machine_with_cuda_hidden_has_no_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    machine = Machine.detect()
    assert machine.gpus == () and machine.memory_mb == {}
    assert machine.cpus and parallelism(TrainingConfig(), machine) == 1
