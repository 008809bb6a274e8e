"""pytest configuration: markers and the project root on sys.path."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: slow test (model loads, long runs); CI runs them too")
    config.addinivalue_line("markers", "integration: starts run.py as a subprocess")
    config.addinivalue_line("markers", "fault: kills or stops processes on purpose")
