"""The Ray actor's side (broker/ray_host.py) without a cluster: its worker's cache folder is named after the
actor's pid and removed when the worker ends; the folder of an actor killed first (ray.kill, a lost node or
a killed service: its own removal never runs) is removed by the next actor that starts on the node."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from broker.ray_host import WorkerHost, clean_stale_caches


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_only_the_caches_of_dead_actors_are_removed(tmp_path):
    dead = dead_pid()
    names = {"stale": f"pythonml-{dead}-worker-a1", "alive": f"pythonml-{os.getpid()}-worker-b2",
             "run folder": f"pythonml-{dead}-c3", "not a pid": "pythonml-worker-d4", "other": f"x-{dead}-worker-e5"}
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.tflite").write_bytes(b"x")
    assert clean_stale_caches(str(tmp_path)) == [str(tmp_path / names["stale"])]
    assert sorted(os.listdir(tmp_path)) == sorted(v for k, v in names.items() if k != "stale")
    assert clean_stale_caches(str(tmp_path / "missing")) == []


def test_run_sweeps_stale_caches_names_its_own_after_its_pid_and_removes_it(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stale = tmp_path / f"pythonml-{dead_pid()}-worker-zz"
    stale.mkdir()
    seen = tmp_path / "seen"
    child = ("import json, os, sys; d = json.loads(sys.argv[2])['cache_dir']; "
             f"assert os.path.isdir(d) and not os.path.exists({str(stale)!r}); open({str(seen)!r}, 'w').write(d)")
    code = WorkerHost().run([sys.executable, "-c", child, "--options-json", "{}"], env={}, cwd=str(tmp_path))
    assert code == 0
    used = seen.read_text()
    assert os.path.basename(used).startswith(f"pythonml-{os.getpid()}-worker-") and os.path.dirname(used) == str(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["seen"]
