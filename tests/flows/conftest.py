"""One temporary Prefect server (and database) for every flow test of the session, and the
project trained once by the `train` flow that the train and evaluate flow tests share."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from prefect.testing.utilities import prefect_test_harness

if TYPE_CHECKING:
    from tests.flows.trained_project import TrainedProject


@pytest.fixture(scope="session", autouse=True)
def prefect_harness():
    with pytest.MonkeyPatch.context() as mp:
        # its telemetry writes to the test database and logs "database is locked"
        mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        with prefect_test_harness(server_startup_timeout=120):
            yield


@pytest.fixture(scope="session")
def trained_project(prefect_harness, tmp_path_factory) -> TrainedProject:
    """See tests/flows/trained_project.py; created by the first test that asks for it."""
    # Imported here, not with this file: importing the flows while pytest collects a
    # conftest leaves pytest's captured stderr closed, and the run ends with no report.
    from tests.flows.trained_project import train_project

    return train_project(tmp_path_factory.mktemp("trained-project"))
