"""Fixtures every test folder may use: a real Orthanc PACS (tests.orthanc_server)."""

from tests.orthanc_server import orthanc  # noqa: F401  (a fixture, registered by importing it)
