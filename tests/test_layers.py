"""Layers point down only (docs/ARCHITECTURE.md): the facade, the broker, the workers and the client share
nothing but the lower packages (common/, shm/, protos/); they talk over the wire (common/wire.py) or gRPC.
And the router never touches a process: that is the process manager's job."""
from __future__ import annotations

import ast
import os

import pytest

from tests.service import ROOT

LOWER = {"common", "shm", "protos"}
PACKAGES = {"facade", "broker", "workers", "client", "common", "shm"}
# what each package may import from the project besides itself
ALLOWED = {"common": {"shm", "protos"}, "shm": {"common"}, "broker": LOWER, "facade": LOWER,
           "workers": LOWER, "client": LOWER}


def project_imports(path: str):
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def files_of(package: str):
    for folder, _, files in os.walk(os.path.join(ROOT, package)):
        for f in files:
            if f.endswith(".py"):
                yield os.path.join(folder, f)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_layers_point_down(package):
    wrong = []
    for path in files_of(package):
        for module in project_imports(path):
            top = module.split(".")[0]
            if top in PACKAGES | {"protos"} and top != package and top not in ALLOWED[package]:
                wrong.append(f"{os.path.relpath(path, ROOT)} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_the_router_never_touches_a_process():
    path = os.path.join(ROOT, "broker", "router.py")
    imported = set(project_imports(path))
    assert not imported & {"subprocess", "signal", "broker.children", "broker.process_manager", "os"}, imported
    text = open(path, encoding="utf-8").read()
    assert "kill(" not in text and "Popen" not in text
