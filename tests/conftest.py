"""Fixtures every test folder may use, each started once per session when a test asks for
it: a real Orthanc PACS (tests.orthanc_server) and a one-node Slurm cluster
(tests.slurm_cluster)."""

from tests.orthanc_server import orthanc  # noqa: F401  (a fixture, registered by importing it)
from tests.slurm_cluster import slurm_cluster  # noqa: F401  (likewise)
