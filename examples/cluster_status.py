"""What is served and where: health, models, and every replica's mesh, KV pages and load.

    python examples/cluster_status.py [--target 127.0.0.1:50051]
"""

import argparse

from ttdist.client import Client

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--target", default="127.0.0.1:50051")
args = parser.parse_args()

with Client(args.target, timeout=10) as client:
    print("health:", client.health())
    for model in client.models():
        print(f"model {model.id}: context {model.max_context}, vocab {model.vocab_size}")
    status = client.cluster_status()
    print(f"policy {status.policy}, {len(status.replicas)} replicas")
    for r in status.replicas:
        print(f"  {r.replica_id}: {r.state} mesh={r.mesh} backend={r.backend} "
              f"pages={r.kv_pages_free}/{r.kv_pages_total} running={r.running} waiting={r.waiting}")
