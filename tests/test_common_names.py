"""common/methods.py names every method of the protos exactly once; common/options.py reads booleans one way."""
from __future__ import annotations

import pytest

from common import methods
from common.options import as_bool
from common.status import StatusError
from protos import ml_inference_pb2 as ML
from protos import pythonml_pb2 as X
from protos.kserve import grpc_service_pb2 as K


def test_every_proto_method_has_one_constant():
    paths = {f"{s.full_name}/{m.name}" for mod in (ML, X, K) for s in mod.DESCRIPTOR.services_by_name.values()
             for m in s.methods}
    constants = [v for k, v in vars(methods).items() if k.isupper() and "/" in str(v)]
    assert sorted(constants) == sorted(paths)
    assert methods.method_name("/" + methods.DETECT_FACES) == "DetectFaces"


@pytest.mark.parametrize("raw,want", [("1", True), (" Yes", True), ("ON", True), ("true", True), ("0", False),
                                      ("no", False), ("Off", False), (True, True), (0, False)])
def test_as_bool_reads(raw, want):
    assert as_bool(raw) is want


def test_as_bool_default_and_refusal():
    assert as_bool(None, True) is True and as_bool("", True) is True and as_bool(" ", False) is False
    with pytest.raises(StatusError) as e:
        as_bool("ture", name="stream")
    assert e.value.code == "INVALID_ARGUMENT" and "stream" in str(e.value)
