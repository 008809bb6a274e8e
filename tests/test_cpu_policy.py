"""CPU policy per pool (common/cpu_policy.py, broker/pool_specs.py): parsing --pools settings, the automatic
policy (latency pools at normal priority, throughput pools niced, thread budgets from the cores), refusals
before anything starts, and a running worker that really has its cores and priority, shown in Stats."""
from __future__ import annotations

import os
import subprocess

import psutil
import pytest

from broker.pool_specs import parse_pool_specs
from common import cpu_policy
from common.cpu_policy import THROUGHPUT_NICE, available_cpus, format_cpus, parse_cpus
from protos import pythonml_pb2 as X, pythonml_pb2_grpc as XG
from tests.service import PYTHON, ROOT, start_service, stats, wait_for

CORES = available_cpus()


def test_default_pools_latency_first():
    specs = {s.pool: s for s in parse_pool_specs("vision,hf,litert", cuda="off")}
    assert specs["vision"].policy.nice == 0 and specs["litert"].policy.nice == 0
    assert specs["hf"].policy.nice == THROUGHPUT_NICE
    # the budgets add up to the machine: half for the latency pools, the other half for hf beside them
    assert specs["vision"].policy.threads == max(1, len(CORES) // 2)
    assert specs["hf"].policy.threads == max(1, len(CORES) - len(CORES) // 2)
    (alone,) = parse_pool_specs("hf", cuda="off")
    assert alone.policy.threads == len(CORES)   # a throughput pool alone takes every core
    # one kind alone: no pinning, no SCHED_IDLE
    assert alone.policy.cpus is None and not alone.policy.idle
    assert all(s.policy.cpus is None and not s.policy.idle for s in parse_pool_specs("vision,litert", cuda="off"))


@pytest.mark.parametrize("cores,latency,throughput", [
    ((0, 1), (0,), (1,)), ((0, 1, 2), (0,), (1, 2)), ((0, 1, 2, 3), (0, 1), (2, 3)), ((2, 5, 7, 9), (2, 5), (7, 9)),
])
def test_both_kinds_split_the_cores_and_throughput_idles(monkeypatch, cores, latency, throughput):
    monkeypatch.setattr(cpu_policy, "available_cpus", lambda: cores)
    specs = {s.pool: s.policy for s in parse_pool_specs("vision,hf,litert", cuda="off")}
    assert specs["vision"].cpus == specs["litert"].cpus == latency
    assert specs["hf"].cpus == throughput
    assert specs["hf"].idle and not specs["vision"].idle and not specs["litert"].idle
    assert specs["hf"].env()["PML_SCHED"] == "idle" and "PML_SCHED" not in specs["vision"].env()
    assert specs["hf"].env()["PML_CPUS"] == ",".join(map(str, throughput))
    # the thread budgets stay what they were: the size of each half
    assert specs["vision"].threads == len(latency) and specs["hf"].threads == len(throughput)


def test_no_split_on_one_core_or_with_the_policy_off_or_a_remote_pool(monkeypatch):
    monkeypatch.setattr(cpu_policy, "available_cpus", lambda: (0,))
    specs = {s.pool: s.policy for s in parse_pool_specs("vision,hf", cuda="off")}
    assert specs["hf"].cpus is None and not specs["hf"].idle and specs["hf"].nice == THROUGHPUT_NICE
    monkeypatch.setattr(cpu_policy, "available_cpus", lambda: (0, 1))
    off = {s.pool: s.policy for s in parse_pool_specs("vision,hf", cuda="off", cpu_policy=False)}
    assert all(p.cpus is None and not p.idle and p.nice == 0 for p in off.values())
    remote = {s.pool: s.policy for s in parse_pool_specs("vision,hf[ray]", cuda="off")}
    assert all(p.cpus is None and not p.idle for p in remote.values())   # hf's cores are its node's


def test_a_gpu_worker_neither_splits_the_cores_nor_idles(monkeypatch):
    """Its CPU side only feeds its device: SCHED_IDLE would starve its kernel launches while frames are served."""
    import broker.pool_specs as pool_specs
    monkeypatch.setattr(cpu_policy, "available_cpus", lambda: (0, 1))
    only_gpu = {s.pool: s.policy for s in parse_pool_specs("vision,hf@cuda:0", cuda="off")}
    assert only_gpu["vision"].cpus is None and only_gpu["hf"].cpus is None and not only_gpu["hf"].idle
    both = {(s.pool, s.device): s.policy for s in parse_pool_specs("vision,hf,hf@cuda:0", cuda="off")}
    assert both[("vision", "cpu")].cpus == (0,) and both[("hf", "cpu")].cpus == (1,) and both[("hf", "cpu")].idle
    assert both[("hf", "cuda:0")].cpus is None and not both[("hf", "cuda:0")].idle
    # the worker --cuda auto adds per device copies the CPU pool's settings, not its automatic half and class
    monkeypatch.setattr(pool_specs, "detect_cuda_devices", lambda: ["cuda:0"])
    auto = {(s.pool, s.device): s.policy for s in parse_pool_specs("vision,hf", cuda="auto")}
    assert auto[("hf", "cpu")].cpus == (1,) and auto[("hf", "cpu")].idle
    gpu = auto[("hf", "cuda:0")]
    assert gpu.cpus is None and not gpu.idle and gpu.nice == THROUGHPUT_NICE
    chosen = {(s.pool, s.device): s.policy for s in parse_pool_specs("vision,hf[cpus=1;sched=idle]", cuda="auto")}
    assert chosen[("hf", "cuda:0")].cpus == (1,) and chosen[("hf", "cuda:0")].idle   # the operator's own choice


def test_the_facade_runs_on_the_idle_pools_cores(monkeypatch):
    monkeypatch.setattr(cpu_policy, "available_cpus", lambda: (0, 1, 2, 3))

    def facade(spec: str, **kw):
        return cpu_policy.facade_cpus([s.policy for s in parse_pool_specs(spec, cuda="off", **kw)])
    assert facade("vision,hf") == (2, 3)                       # the automatic split: the throughput half
    assert facade("vision,hf,litert") == (2, 3)
    assert facade("vision,hf[sched=normal]") is None           # nothing idles: anywhere, as before
    assert facade("vision,hf", cpu_policy=False) is None
    assert facade("vision") is None and facade("hf") is None    # no split (hf alone idles nowhere)
    assert facade("vision[cpus=0-2],hf[cpus=2-3]") == (3,)     # never on a core a normal pool is pinned to
    assert facade("vision[cpus=0-3],hf[cpus=2-3]") is None
    assert facade("fake[cpus=3;sched=idle],fake2") == (3,)
    assert facade("hf[sched=idle]") is None                     # an idle pool on every core: nothing to leave


def test_split_overrides(monkeypatch):
    monkeypatch.setattr(cpu_policy, "available_cpus", lambda: (0, 1, 2, 3))
    specs = {s.pool: s.policy for s in parse_pool_specs("vision[cpus=0-3],hf[sched=normal;nice=19]", cuda="off")}
    assert specs["vision"].cpus == (0, 1, 2, 3) and specs["vision"].threads == 2
    assert specs["hf"].cpus == (2, 3) and not specs["hf"].idle and specs["hf"].nice == 19
    (alone,) = parse_pool_specs("hf[sched=idle]", cuda="off")
    assert alone.policy.idle and alone.policy.cpus is None


def test_policy_off_and_overrides():
    (hf,) = parse_pool_specs("hf", cuda="off", cpu_policy=False)
    assert hf.policy.nice == 0
    first = CORES[0]
    vision, hf = parse_pool_specs(f"vision[cpus={first}],hf@cpu*2[cpus={first};nice=3;threads=1]", cuda="off")
    assert vision.policy.cpus == (first,) and vision.policy.threads == 1
    assert (hf.pool, hf.device, hf.count) == ("hf", "cpu", 2)
    assert (hf.policy.cpus, hf.policy.nice, hf.policy.threads) == ((first,), 3, 1)
    assert parse_pool_specs("fake", cuda="off", worker_threads=3)[0].policy.threads == 3


def test_core_lists():
    assert parse_cpus(",".join(str(c) for c in CORES)) == CORES
    assert format_cpus((0, 1, 2, 5, 7, 8)) == "0-2,5,7-8" and format_cpus(None) == "all"
    if len(CORES) >= 2 and CORES[1] == CORES[0] + 1:
        assert parse_cpus(f"{CORES[0]}-{CORES[1]}") == CORES[:2]
    (spec,) = parse_pool_specs(f"vision[cpus={CORES[0]},{CORES[-1]};nice=1]", cuda="off")  # commas inside []
    assert spec.policy.cpus == tuple(sorted({CORES[0], CORES[-1]})) and spec.policy.nice == 1


@pytest.mark.parametrize("spec,words", [
    ("bogus", "unknown pool"), ("vision[cpus=99999]", "not available"), ("vision[cpus=1-0]", "backwards"),
    ("vision[nice=-5]", "outside 0..19"), ("vision[nice=x]", "not a number"), ("vision[threads=0]", "at least 1"),
    ("vision[speed=9]", "unknown pool setting"), ("hf[sched=fifo]", "idle or normal"), ("vision[cpus=0", "without ']'"), ("vision*0", "at least 1"),
    ("vision@", "pool[@device]"),
])
def test_bad_specs_refused_with_the_reason(spec, words):
    with pytest.raises(ValueError) as e:
        parse_pool_specs(spec, cuda="off")
    assert words in str(e.value)


def test_run_refuses_a_bad_spec_before_starting():
    p = subprocess.run([PYTHON, os.path.join(ROOT, "run.py"), "--pools", "vision[nice=99]"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "outside 0..19" in p.stderr


@pytest.mark.integration
def test_worker_runs_with_its_cores_and_priority_and_stats_say_so():
    core = CORES[-1]
    with start_service(["--pools", f"fake[cpus={core};nice=4;threads=1;sched=idle],fake2"]) as svc:
        def both_ready():
            ready = [w for w in stats(svc.channel()).workers if w.state == "ready"]
            return ready if len(ready) == 2 else None
        ws = wait_for(both_ready)
        by_pool = {w.pool: w for w in ws}
        pinned, free = by_pool["fake"], by_pool["fake2"]
        assert (pinned.cpus, pinned.nice, pinned.threads, pinned.sched) == (str(core), 4, 1, "idle")
        assert free.cpus == "all" and free.nice == 0 and free.sched == "normal"
        own_nice = psutil.Process().nice()
        p = psutil.Process(pinned.pid)
        assert p.cpu_affinity() == [core] and p.nice() == own_nice + 4
        assert psutil.Process(free.pid).nice() == own_nice
        # SCHED_IDLE was taken before any thread started, so every thread of the worker has it
        tids = [int(t) for t in os.listdir(f"/proc/{pinned.pid}/task")]
        assert len(tids) > 1 and all(os.sched_getscheduler(t) == os.SCHED_IDLE for t in tids)
        assert os.sched_getscheduler(free.pid) == os.SCHED_OTHER
        assert p.environ().get("OMP_NUM_THREADS") == "1"
        # the facade keeps to the idle pool's core while a latency pool is served (facade/cores.py), and has
        # every core again once none was for a while
        (facade,) = [c for c in psutil.Process(svc.proc.pid).children() if "facade.server" in " ".join(c.cmdline())]

        def facade_cores() -> set:
            cores = {frozenset(os.sched_getaffinity(int(t))) for t in os.listdir(f"/proc/{facade.pid}/task")}
            assert len(cores) == 1, f"the facade's threads disagree: {cores}"
            return set(next(iter(cores)))
        wait_for(lambda: facade_cores() == set(CORES))
        list(XG.DiagnosticsStub(svc.channel()).Echo(X.EchoRequest(pool="fake2", payload=b"x"), timeout=30))
        assert facade_cores() == {core}
        wait_for(lambda: facade_cores() == set(CORES), timeout=15)
        out = subprocess.run([PYTHON, os.path.join(ROOT, "run.py"), "call", "--address", svc.address, "stats"],
                             capture_output=True, text=True, timeout=60).stdout
        row = next(line.split() for line in out.splitlines() if line.startswith(pinned.worker_id))
        assert out.splitlines()[1].split()[-6:] == ["cpus", "nice", "sched", "thr", "node", "models"]
        assert row[-6:] == [str(core), "4", "idle", "1", "local", "-"]   # a local child, no model loaded
