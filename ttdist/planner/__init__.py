"""Capacity planning: will a model fit on a system, how many users at what context, how fast.

``plan()`` sizes per-chip DRAM from the model's own layout and times a decode step and a
prefill from the model's own ops as the published implementation runs them (DRAM streaming,
compute, collectives over Ethernet, fixed per-op latency, dispatch, paged attention over the
context), with constants documented in ``hardware.py``; ``kv_plan()`` gives a coordinator KV
pages and the decode batch; ``fleet.size_fleet()`` sizes replicas for a load and an SLO with a
simulation of the engine's scheduler (``queueing.py``). ``ttdist plan`` is the command.
"""

from ttdist.planner.catalog import MODELS, PlanError, parse_system, resolve_model, resolve_precision
from ttdist.planner.plan import KvPlan, Plan, kv_plan, plan

__all__ = ["KvPlan", "MODELS", "Plan", "PlanError", "kv_plan", "parse_system", "plan",
           "resolve_model", "resolve_precision"]
