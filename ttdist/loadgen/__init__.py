"""Serving benchmark: load a running ttdist cluster and measure what its users see.

Workloads (``workload``), targets over gRPC or the OpenAI HTTP API (``targets``), load by
rate or concurrency (``runner``), vLLM-style metrics with goodput (``metrics``), reports
(``report``) and plots (``plot``). ``ttdist bench`` is the command.
"""

from ttdist.loadgen.metrics import Summary, parse_slo, summarize
from ttdist.loadgen.runner import Load, LoadError, Phase, Run, parse_schedule, run
from ttdist.loadgen.workload import Request, WorkloadError, jsonl_requests, parse_length, random_requests, shared_prefix_requests

__all__ = ["Load", "LoadError", "Request", "Run", "Summary", "WorkloadError", "jsonl_requests", "parse_length",
           "parse_schedule", "parse_slo", "Phase", "random_requests", "run", "shared_prefix_requests", "summarize"]
