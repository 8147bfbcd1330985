"""Hosts, not just processes: a Ray head and two worker nodes, each in its own network
namespace on this machine, joined by veth pairs on a bridge (addresses from the benchmarking
range 198.18.0.0/15, assigned only inside the namespaces this test creates; all traffic stays
on this machine). A scripted replica on each worker node listens on its node's IP. One worker
node is killed mid-stream (every process in its namespace, its raylet included, by PID): its
replica is marked failed and every stream finishes exactly on the other node.

Needs root (``ip netns``); skips with the reason where namespaces cannot be created.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
NODES = {"h": "198.18.0.1", "w1": "198.18.0.2", "w2": "198.18.0.3"}
RESOURCES = {"h": "node_head", "w1": "node_w1", "w2": "node_w2"}


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, check=check)


class Hosts:
    """Three network namespaces on one bridge; everything made here is removed by ``close``."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.ns = {n: f"ttd{tag}{n}" for n in NODES}
        self.bridge = f"ttdbr{tag}"
        self.temp = Path(tempfile.mkdtemp(prefix="ttdns", dir="/tmp"))   # Ray's socket paths must be short
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled",
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}
        self.created: list[str] = []

    def create(self) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        self.created.append("bridge")
        sh("ip", "link", "set", self.bridge, "up")
        for node, ip in NODES.items():
            ns, veth = self.ns[node], f"{self.bridge}{node}"
            sh("ip", "netns", "add", ns)
            self.created.append(ns)
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", veth, "master", self.bridge, "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")

    def in_ns(self, node: str, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[node], *cmd]

    def start_ray(self, node: str) -> None:
        common = ["--node-ip-address", NODES[node], "--num-cpus", "1", "--resources",
                  json.dumps({RESOURCES[node]: 1}), "--disable-usage-stats"]
        if node == "h":
            cmd = [RAY, "start", "--head", "--port", "6379", "--include-dashboard", "false",
                   "--temp-dir", str(self.temp), *common]
        else:
            cmd = [RAY, "start", "--address", f"{NODES['h']}:6379", *common]
        proc = subprocess.run(self.in_ns(node, *cmd), capture_output=True, text=True, env=self.env, timeout=180)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def pids(self, node: str) -> list[int]:
        out = sh("ip", "netns", "pids", self.ns[node], check=False).stdout
        return [int(p) for p in out.split()]

    def kill_node(self, node: str) -> list[int]:
        """SIGKILL every process in ``node``'s namespace (its raylet, workers, replica) until none is left."""
        killed: list[int] = []
        for _ in range(50):
            pids = self.pids(node)
            if not pids:
                return killed
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        raise AssertionError(f"processes left in {self.ns[node]}: {self.pids(node)}")

    def close(self) -> None:
        for node in NODES:
            if self.ns[node] in self.created:
                self.kill_node(node)
                sh("ip", "netns", "del", self.ns[node], check=False)
        if "bridge" in self.created:
            sh("ip", "link", "del", self.bridge, check=False)
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture
def hosts():
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command: network namespaces cannot be created here")
    probe = f"ttdprobe{os.getpid() % 100000}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot create network namespaces here ({made.stderr.strip() or 'ip netns add failed'})")
    sh("ip", "netns", "del", probe, check=False)
    h = Hosts()
    try:
        h.create()
        yield h
    finally:
        h.close()


def test_worker_node_killed_mid_stream_every_stream_finishes_on_the_other(hosts):
    for node in ("h", "w1", "w2"):
        hosts.start_ray(node)
    driver = subprocess.Popen(
        hosts.in_ns("h", sys.executable, "-m", "tests.support.multinode_driver", f"{NODES['h']}:6379"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=hosts.env, cwd=ROOT)
    try:
        line = driver.stdout.readline()
        assert line.startswith("STARTED"), line + driver.stderr.read()[-4000:] if not line else line
        before = json.loads(line.split(" ", 1)[1])
        assert before["replica-0"][1].startswith(NODES["w1"] + ":")     # replicas listen on their node's IP
        assert before["replica-1"][1].startswith(NODES["w2"] + ":")
        assert hosts.kill_node("w1")
        driver.stdin.write("killed\n")
        driver.stdin.flush()
        out, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 0, err[-4000:]
    result = json.loads(out.strip().splitlines()[-1])
    streams = result["streams"]
    assert all(s["exact"] for s in streams), streams
    assert any(s["at_kill"] < s["tokens"] for s in streams), "the node died after every stream had finished"
    assert {s["replica"] for s in streams} == {"replica-1"}
    assert result["states"] == {"replica-0": "failed", "replica-1": "ready"}, result
    assert result["failed_events"], result
