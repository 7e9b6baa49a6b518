"""The machine description every run records: CPU, float-relevant instruction sets, versions."""

from __future__ import annotations

import json

import numpy as np

from components.machine import (
    KERNEL_PINS,
    cpu_description,
    library_versions,
    machine_description,
    machine_record,
    machine_tags,
)

ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7763 64-Core Processor
flags\t\t: fpu sse4_2 avx fma avx2 bmi2 sha_ni
"""
SAPPHIRE_RAPIDS = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: avx avx2 fma avx512f avx512_bf16 avx512_fp16 amx_tile amx_bf16 amx_int8
"""
GRAVITON = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes sve sve2
"""


def test_the_instruction_sets_that_change_floats_are_read_from_cpuinfo():
    assert cpu_description(ZEN3) == ("AMD EPYC 7763 64-Core Processor", ["avx", "avx2", "fma"])
    model, flags = cpu_description(SAPPHIRE_RAPIDS)
    assert model.startswith("Intel(R) Xeon(R) Platinum")
    assert {"avx512f", "amx_bf16"} <= set(flags) and "sve" not in flags
    _, arm_flags = cpu_description(GRAVITON)
    assert arm_flags == ["asimd", "sve", "sve2"]


def test_versions_are_the_installed_ones():
    versions = library_versions()
    assert versions["numpy"] == np.__version__
    assert set(versions) == {"tensorflow", "keras", "jax", "jaxlib", "numpy"}


def test_the_description_is_json_and_names_the_pins(monkeypatch):
    for pin in KERNEL_PINS:
        monkeypatch.delenv(pin, raising=False)
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    description = machine_description()
    json.dumps(description)
    assert description["kernel_pins"] == {"TF_ENABLE_ONEDNN_OPTS": "0"}
    tags = machine_tags(description)
    assert tags["machine.pin.TF_ENABLE_ONEDNN_OPTS"] == "0"
    assert tags["machine.numpy"] == np.__version__
    assert tags["machine.cpu"] == description["cpu"]


def test_the_metrics_file_record_has_no_lists_for_dvc_to_drop():
    description = machine_description()
    record = machine_record(description)
    assert record["cpu_flags"] == (" ".join(description["cpu_flags"]) or "none")
    assert record["libraries"] == description["libraries"]

    def values(node):
        return [v for x in node.values() for v in values(x)] if isinstance(node, dict) else [node]

    assert all(isinstance(v, (str, int, float)) for v in values(record)), record
