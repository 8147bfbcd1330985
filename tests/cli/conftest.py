"""Fixtures for the CLI tests: the client tests' scripted gRPC server, scripted router stacks."""

from tests.support.scripted_generation import scripted  # noqa: F401  (the fixture)
from tests.support.stack import scripted_stacks  # noqa: F401  (the make_stack fixture)
