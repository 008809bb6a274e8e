"""A second "machine" for the tests: a network namespace made by the test, joined to this one by a veth pair
on a private /30 (addresses inside this machine only), with a Ray node started inside it. Cutting the
link (`partition`) and restoring it (`heal`) make a real network partition between the broker and the
workers on that host: packets are lost, no connection is reset."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

from tests.service import ROOT


def netns_available() -> bool:
    if os.geteuid() != 0 or not shutil.which("ip"):
        return False
    probe = f"pmlprobe{os.getpid() % 100000}"
    ok = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ok


class NetnsHost:
    def __init__(self, tag: str):
        n = os.getpid() % 250 + 1
        self.ns = f"pml-{tag}-{os.getpid()}"
        self.host_if, self.ns_if = f"pmh{tag}{n}"[:15], f"pmn{tag}{n}"[:15]
        self.host_ip, self.ip = f"10.231.{n}.1", f"10.231.{n}.2"
        self.ray: subprocess.Popen | None = None

    def _ip(self, *args, inside: bool = False, check: bool = True) -> None:
        cmd = (["ip", "netns", "exec", self.ns] if inside else []) + ["ip", *args]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if check and r.returncode:
            raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")

    def create(self) -> "NetnsHost":
        self._ip("netns", "add", self.ns)
        self._ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        self._ip("link", "set", self.ns_if, "netns", self.ns)
        self._ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        self._ip("link", "set", self.host_if, "up")
        self._ip("addr", "add", f"{self.ip}/30", "dev", self.ns_if, inside=True)
        self._ip("link", "set", "lo", "up", inside=True)
        self.heal()
        return self

    def start_ray_node(self, head_address: str, resources: dict, num_cpus: int = 1) -> None:
        """`ray start --block` inside the namespace: its raylet, its Ray workers and our worker processes all
        live behind the veth link (killing this process stops them all)."""
        self.ray = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, os.path.join(ROOT, ".venv", "bin", "ray"), "start", "--block",
             f"--address={head_address}", f"--node-ip-address={self.ip}", f"--num-cpus={num_cpus}",
             f"--resources={json.dumps(resources)}", "--object-store-memory=83886080", "--disable-usage-stats"],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)

    def partition(self) -> None:
        self._ip("link", "set", self.ns_if, "down", inside=True)

    def heal(self) -> None:
        self._ip("link", "set", self.ns_if, "up", inside=True)
        # a link going down takes its routes with it
        self._ip("route", "replace", "default", "via", self.host_ip, inside=True)

    def destroy(self) -> None:
        if self.ray is not None and self.ray.poll() is None:
            self.heal()   # let it drain and tell the cluster
            os.killpg(self.ray.pid, signal.SIGTERM)
            try:
                self.ray.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.ray.pid, signal.SIGKILL)
                self.ray.wait()
        self._ip("netns", "del", self.ns, check=False)
        self._ip("link", "del", self.host_if, check=False)   # gone with the namespace already, normally
        time.sleep(0.1)
