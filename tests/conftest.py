"""Fixtures every test folder may use, each started once per session when a test asks for
it: a real Orthanc PACS (tests.orthanc_server) and a one-node Slurm cluster
(tests.slurm_cluster); and how the tests are shared between `pytest -n` workers."""

from pathlib import Path

import pytest

from tests.orthanc_server import orthanc  # noqa: F401  (a fixture, registered by importing it)
from tests.slurm_cluster import slurm_cluster  # noqa: F401  (likewise)

TESTS = Path(__file__).resolve().parent


def xdist_group(item: pytest.Item) -> str:
    """Which worker group a test runs in under `pytest -n N --dist loadgroup`: a module's
    tests stay together (its module fixtures are made once); the flow tests share one Prefect
    server and one trained project, and the tests of the group's services (PostgreSQL, the
    MLflow server, the Slurm cluster) share those: each set on one worker."""
    if item.get_closest_marker("group") or "slurm_cluster" in getattr(item, "fixturenames", ()):
        return "group-services"
    module = Path(str(item.fspath)).resolve().relative_to(TESTS)
    return "flows" if module.parts[0] == "flows" else module.as_posix()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.xdist_group(xdist_group(item)))
