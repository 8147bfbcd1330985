"""Routing policies, one file each, behind ``select(replicas, request)``; pick one by name."""

from __future__ import annotations

from ttdist.router.policies.base import (
    LoadWeights,
    NoReplicaError,
    Policy,
    ReplicaView,
    RequestInfo,
)
from ttdist.router.policies.cache_aware import CacheAware
from ttdist.router.policies.candidates import Candidates, Pool, route
from ttdist.router.policies.least_load import LeastLoad
from ttdist.router.policies.power_of_two import PowerOfTwo
from ttdist.router.policies.round_robin import RoundRobin

POLICIES = {
    "round_robin": RoundRobin,
    "least_load": LeastLoad,
    "power_of_two": PowerOfTwo,
    "cache_aware": CacheAware,
}


class UnknownPolicyError(ValueError):
    """A policy name that is not one of ``POLICIES``."""


def make_policy(name: str) -> Policy:
    """A fresh policy object for ``name``."""
    try:
        return POLICIES[name]()
    except KeyError:
        raise UnknownPolicyError(f"unknown policy {name!r}: use one of {', '.join(POLICIES)}") from None


__all__ = [
    "CacheAware", "Candidates", "LeastLoad", "LoadWeights", "NoReplicaError", "POLICIES", "Policy", "Pool", "PowerOfTwo",
    "ReplicaView", "RequestInfo", "RoundRobin", "UnknownPolicyError", "make_policy", "route",
]
