"""One temporary Prefect server (and database) for every flow test of the session."""

import pytest
from prefect.testing.utilities import prefect_test_harness


@pytest.fixture(scope="session", autouse=True)
def prefect_harness():
    with pytest.MonkeyPatch.context() as mp:
        # its telemetry writes to the test database and logs "database is locked"
        mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        with prefect_test_harness(server_startup_timeout=120):
            yield
