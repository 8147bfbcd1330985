"""What the test suite shares, one way each (the way vLLM's tests/utils.py serves its suite).

- ``waiting.wait_for``: poll a predicate to a deadline, fail with a message.
- ``generation``: gRPC request builders and stream collectors (sync and asyncio).
- ``scripted``: the scripted engine's exact continuation of a prompt.
- ``checkpoints``: tiny random Llama checkpoints, built once per session.
- ``stack``: a router in front of replicas, all in this process over real gRPC.
- ``cluster``: a real local Ray cluster through ``deploy()``, and concurrent streams through it.
- ``serve_process``: a ``ttdist serve`` child process, started and stopped.
- ``grafana``: the Grafana dashboard's PromQL, parsed and checked against a ``/metrics`` exposition.
- ``engine_fakes``, ``scripted_generation``, ``dashboard_snapshots``, ``model_checks``,
  ``registry_fixtures``: fakes and reference helpers of one area, shared by its tests.

Test modules import from here, never from one another or from a conftest.
"""
