"""Fixtures for the client tests: a real gRPC server over the scripted backend."""

from tests.support.scripted_generation import scripted  # noqa: F401  (the fixture)
