"""Every engine a replica can serve implements ``ServingEngine`` as declared: each method there,
a coroutine where the protocol's is one (a replica awaits those on its event loop) and a plain
method where it is not."""

from __future__ import annotations

import inspect

import pytest

from ttdist.engine import AsyncEngine, ServingEngine
from ttdist.engine.process import EngineProcess
from ttdist.runtime.scripted_engine import ScriptedEngine

METHODS = sorted(name for name, member in vars(ServingEngine).items()
                 if inspect.isfunction(member) and not name.startswith("_"))


def test_the_protocol_has_what_a_replica_uses():
    assert METHODS == ["abort", "generate", "inject_faults", "launch", "liveness", "memory", "read_prefix_hashes",
                       "read_stats", "read_tier_hashes", "stop"]


@pytest.mark.parametrize("engine", [AsyncEngine, EngineProcess, ScriptedEngine])
def test_each_engine_implements_every_method_as_declared(engine):
    for name in METHODS:
        declared = getattr(ServingEngine, name)
        implemented = getattr(engine, name, None)
        assert callable(implemented), f"{engine.__name__} has no {name}"
        assert inspect.iscoroutinefunction(implemented) == inspect.iscoroutinefunction(declared), \
            f"{engine.__name__}.{name}: {'a coroutine' if inspect.iscoroutinefunction(declared) else 'not a coroutine'} in ServingEngine"
