"""Ray's real autoscaler on one machine: a head node plus worker nodes its fake provider starts.

The same thing as ``ray.cluster_utils.AutoscalingCluster`` (Ray's ``fake_multinode`` provider
runs the real autoscaler, each "node" a raylet on this host), without its two problems here:
Ray 2.60's wheel lacks the ``example.yaml`` it reads, and its ``start`` / ``shutdown`` run
``ray stop --force``, which stops every Ray process on the machine. This one runs
``ray start --head --block`` as its own child, on a port of its own, and on exit kills that
child and its descendants (the head's processes and every worker node the provider started) by PID.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ttdist.runtime.procs import descendants

START_TIMEOUT_S = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_cluster_config(head_resources: dict, worker_node_types: dict, gcs_address: str,
                        idle_timeout_minutes: float) -> dict:
    """An autoscaler cluster config for Ray's fake multi-node provider (the fields its example has)."""
    types = dict(worker_node_types)
    types["ray.head.default"] = {"resources": head_resources, "node_config": {}, "max_workers": 0}
    return {
        "cluster_name": "ttdist-fake", "max_workers": sum(t.get("max_workers", 0) for t in types.values()),
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "available_node_types": types, "head_node_type": "ray.head.default",
        "upscaling_speed": 1.0, "idle_timeout_minutes": idle_timeout_minutes,
        "docker": {}, "auth": {"ssh_user": "ubuntu"}, "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


@contextmanager
def autoscaling_cluster(head_resources: dict, worker_node_types: dict,
                        idle_timeout_minutes: float = 0.1) -> Iterator[str]:
    """A running fake autoscaling cluster; yields its GCS address for ``ray.init(address=...)``."""
    port = _free_port()
    gcs = f"127.0.0.1:{port}"
    head = dict(head_resources)
    cpus = head.pop("CPU", 0)
    workdir = Path(tempfile.mkdtemp(prefix="ttdist-autoscaling-"))
    config = workdir / "cluster.json"
    config.write_text(json.dumps(fake_cluster_config({"CPU": cpus, **head}, worker_node_types, gcs,
                                                     idle_timeout_minutes)))
    ray_cli = str(Path(sys.executable).with_name("ray"))
    cmd = [ray_cli, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
           f"--autoscaling-config={config}", f"--num-cpus={cpus}", "--include-dashboard=false",
           "--disable-usage-stats"]
    if head:
        cmd.append(f"--resources={json.dumps(head)}")
    env = {**os.environ, "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1", "RAY_AUTH_MODE": "disabled"}
    log = open(workdir / "ray-start.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_gcs(port, proc, workdir)
        yield gcs
    finally:
        pids = descendants(proc.pid) | {proc.pid}
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)
        log.close()


def _wait_gcs(port: int, proc: subprocess.Popen, workdir: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}: {(workdir / 'ray-start.log').read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"the fake autoscaling cluster's GCS did not listen on {port} within {START_TIMEOUT_S} s")
