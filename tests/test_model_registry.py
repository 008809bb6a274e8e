"""workers.base.ModelRegistry: the one registry of a worker's loaded models (every family, hf included)."""
from __future__ import annotations

from workers.base import ModelRecord, ModelRegistry


def test_changes_are_announced_with_a_rising_version():
    told = []
    reg = ModelRegistry(on_loaded=lambda rec, v: told.append(("loaded", rec.model_id, v)),
                        on_unloaded=lambda mid, v: told.append(("unloaded", mid, v)))
    runtime = object()
    reg.add(ModelRecord("a", "text-generation", ram_mb=1.5, runtime=runtime))
    reg.add(ModelRecord("b"))
    assert reg.get("a").runtime is runtime and "a" in reg and reg["b"].model_id == "b"
    assert sorted(reg) == ["a", "b"] and len(reg) == 2
    assert reg.remove("a").runtime is runtime
    assert reg.remove("a") is None                     # not loaded: nothing to announce
    assert told == [("loaded", "a", 1), ("loaded", "b", 2), ("unloaded", "a", 3)]
    assert reg.snapshot()["models_version"] == 3 and [m["model_id"] for m in reg.snapshot()["models"]] == ["b"]


def test_the_broker_never_sees_the_runtime_or_the_replay_payload():
    rec = ModelRecord("m", "feature-extraction", ram_mb=2.0, load_payload=b"\x01", runtime=[object()])
    summary = rec.summary()
    assert "runtime" not in summary and "load_payload" not in summary
    assert summary["model_id"] == "m" and summary["ram_mb"] == 2.0 and summary["load_method"].endswith("/LoadModel")
