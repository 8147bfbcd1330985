"""Errors raised by mesh backends."""

from ttdist.errors import PermanentError


class MeshError(PermanentError, ValueError):
    """An op was asked for something the mesh cannot do (shapes, placements, axes)."""


class PartialTensorError(MeshError):
    """A tensor holding pending partial sums reached an op that is not linear in it."""
