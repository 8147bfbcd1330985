"""The one error kind every layer shares: a failure that retrying cannot fix.

A replica's start fails either for a while (a node that died, a port taken, a timeout on a
loaded host) or for good: a checkpoint file that is missing or corrupt, a mesh the model does
not fit, a backend whose package is not installed. The error's class says which, where it is
raised: errors of the second kind derive from ``PermanentError`` (``CheckpointError``,
``MeshError``, ``DramOverflowError``, ``TokenizerError``, ...), so the coordinator stops
restarting such a replica and ``ttdist serve`` says why at once instead of retrying.

This module imports nothing, so the lowest layer (mesh) can use it.
"""


class PermanentError(Exception):
    """A failure that the same inputs hit again on every try: restarting cannot help."""
