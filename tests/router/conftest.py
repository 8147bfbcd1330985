"""A router in front of scripted replicas, all real gRPC servers in this process."""

from tests.support.stack import scripted_stacks  # noqa: F401  (the make_stack fixture)
