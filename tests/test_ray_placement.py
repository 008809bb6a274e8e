"""Placing a pool on Ray through --pools (broker/ray_placement.py, broker/pool_specs.py) and run.py's refusals
before anything starts; no Ray cluster needed."""
from __future__ import annotations

import subprocess

import pytest

from broker.pool_specs import parse_pool_specs
from tests.service import PYTHON, ROOT


def test_ray_settings_become_actor_options():
    vision, hf = parse_pool_specs("vision,hf[ray;num_cpus=2;memory_mb=512;resources=gpu_host:1+ssd:0.5;label=zone:b]",
                                  cuda="off")
    assert vision.placement is None
    assert hf.placement.actor_options() == {"num_cpus": 2.0, "num_gpus": 0.0, "max_restarts": 0, "max_task_retries": 0,
                                            "memory": 512 * 2**20, "resources": {"gpu_host": 1.0, "ssd": 0.5},
                                            "label_selector": {"zone": "b"}}
    assert hf.policy.threads == 2, "a Ray-placed worker's thread budget is the CPUs it reserved"
    (gpu,) = parse_pool_specs("hf@cuda:0[ray]", cuda="off")
    assert gpu.placement.num_gpus == 1.0 and gpu.device == "cuda:0"
    # a remote pool does not count in this machine's thread budgets: vision alone here takes its half
    (local_hf, remote_vision) = parse_pool_specs("hf,vision[ray]", cuda="off")
    assert remote_vision.placement is not None and local_hf.placement is None


@pytest.mark.parametrize("spec,words", [
    ("hf[num_cpus=2]", "add 'ray'"), ("hf[ray;cpus=0]", "num_cpus="), ("hf[ray;num_cpus=x]", "not a number"),
    ("hf[ray;num_gpus=-1]", ">= 0"), ("hf[ray;resources=a]", "NAME:AMOUNT"), ("hf[ray=2]", "bare word"),
    ("hf[ray;speed=1]", "unknown pool setting"), ("hf[ray;num_gpus=1.5]", "whole numbers"),
])
def test_bad_ray_settings_refused(spec, words):
    with pytest.raises(ValueError) as e:
        parse_pool_specs(spec, cuda="off")
    assert words in str(e.value)


def test_ray_pool_without_an_address_refused_before_start():
    r = subprocess.run([PYTHON, "run.py", "--pools", "fake[ray]", "--port", "0"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "--ray-address is not set" in r.stderr, r.stderr
