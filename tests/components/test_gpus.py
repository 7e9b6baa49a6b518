import threading

from components.gpus import GpuPool, visible_gpus


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
    pool = GpuPool(["0", "1"])
    held: list[str] = []
    peak = []
    lock = threading.Lock()

    def work() -> None:
        with pool.lease() as env:
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
    assert max(peak) <= 2


def test_cpu_pool_hides_gpus():
    with GpuPool([]).lease() as env:
        assert env == {"CUDA_VISIBLE_DEVICES": ""}
