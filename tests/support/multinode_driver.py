"""The driver side of tests/faults/test_node_loss.py: runs inside the head node's network namespace.

Joins the Ray cluster at argv[1], deploys two scripted replicas (one per worker node, each
listening on its node's IP), starts greedy streams on both, prints ``STARTED`` and waits for
a line on stdin (the test has killed one worker node by then), lets every stream finish and
prints one JSON line: each stream's outcome and the registry's states and events.
"""

from __future__ import annotations

import json
import sys

import ray

from tests.support.cluster import SCRIPTED, Streams, running_cluster
from tests.support.generation import stub_for
from tests.support.scripted import expected_tokens
from tests.support.waiting import wait_for
from ttdist.runtime.config import ClusterConfig, HealthConfig, ReplicaGroup

PROMPTS = [[21 + 3 * i, 5, 8 + i] for i in range(6)]
N_TOKENS = 200


def main() -> None:
    config = ClusterConfig(
        engine="scripted", scripted=SCRIPTED, replica_host="", port=0, dashboard_port=None,
        groups=(ReplicaGroup(resources={"node_w1": 1}), ReplicaGroup(resources={"node_w2": 1})),
        health=HealthConfig(heartbeat_s=0.25, unhealthy_after_s=2.0, failed_after_s=4.0, restart=False),
    )
    with running_cluster(config, address=sys.argv[1], serving_timeout_s=120) as deployment:
        before = {r.replica_id: (r.node_id, r.address) for r in ray.get(deployment.coordinator.replicas.remote())}
        channel, stub = stub_for(deployment.address)
        streams = Streams(stub, PROMPTS, N_TOKENS, started_after=3)
        streams.wait_started()
        print("STARTED", json.dumps(before), flush=True)
        sys.stdin.readline()
        killed_at = [len(o.ids) for o in streams.outcomes]
        outcomes = streams.join()
        try:
            wait_for(lambda: replica_records(deployment)["replica-0"].state == "failed", 60, "replica-0 failed",
                     every=0.2)
        except AssertionError:
            pass    # the test reports the states as they are
        records = replica_records(deployment)
        snapshot = ray.get(deployment.coordinator.snapshot.remote())
        channel.close()
        print(json.dumps({
            "before": before,
            "states": {rid: r.state for rid, r in records.items()},
            "failed_events": [e.message for e in snapshot.events if e.kind == "replica_failed"],
            "streams": [{
                "exact": o.error is None and o.ids == expected_tokens(p, N_TOKENS)
                and list(o.complete.output_ids) == o.ids,
                "tokens": len(o.ids), "at_kill": k, "replica": o.complete.replica_id if o.complete else "",
                "error": f"{o.error.code().name}: {o.error.details()}" if o.error else "",
            } for p, o, k in zip(PROMPTS, outcomes, killed_at)],
        }), flush=True)


def replica_records(deployment) -> dict:
    return {r.replica_id: r for r in ray.get(deployment.coordinator.replicas.remote())}


if __name__ == "__main__":
    main()
