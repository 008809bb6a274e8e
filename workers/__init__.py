"""Worker processes: base.py (plumbing), one module per model family, fake_worker.py for tests."""
