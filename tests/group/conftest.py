"""The group's services (tests.group_services) for the tests of this folder."""

from tests.group_services import (  # noqa: F401  (fixtures, registered by importing them)
    group_mlflow_server,
    postgres_server,
)
