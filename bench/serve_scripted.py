"""Serve scripted replicas behind one router, without Ray or a model, for ``ttdist bench``.

The replicas are scripted engines (``ttdist.runtime.scripted_engine``): each decode step sleeps
``--step-ms``, each uncached prompt token costs ``--prefill-us``, a batch holds ``--max-batch``
requests. They and the router run in processes of their own (bench_router.py's harness), so a
``ttdist bench`` run against the printed target measures the serving stack and the engines'
scheduling, not a model. Runs until Ctrl-C or SIGTERM.

    .venv/bin/python bench/serve_scripted.py [--replicas 2] [--step-ms 14] [--prefill-us 50] [--max-batch 32] [--policy least_load]
    .venv/bin/ttdist bench --target 127.0.0.1:PORT --sweep 2,4,8,16 ...
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_router import Processes  # noqa: E402

from ttdist.runtime.scripted_engine import ScriptedEngineConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--step-ms", type=float, default=14.0, help="decode step time (default 14 ms, a Galaxy decode step)")
    ap.add_argument("--prefill-us", type=float, default=50.0, help="prefill time per uncached prompt token")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--vocab-size", type=int, default=1000)
    ap.add_argument("--policy", default="least_load")
    args = ap.parse_args()
    cfg = ScriptedEngineConfig(vocab_size=args.vocab_size, step_s=args.step_ms / 1000,
                               prefill_s_per_token=args.prefill_us / 1e6, max_batch=args.max_batch)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    procs = Processes(args.replicas, cfg, args.policy)
    try:
        print(f"serving {args.replicas} scripted replicas ({args.step_ms:g} ms step, batch {args.max_batch}) "
              f"on 127.0.0.1:{procs.router_port}", flush=True)
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        procs.close()


if __name__ == "__main__":
    main()
