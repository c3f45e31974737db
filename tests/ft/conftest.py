"""Fixtures of the fault-tolerance tests."""

import os

import pytest
from _helpers import segments
from osmos.ft.manager import start_manager


@pytest.fixture
def manager():
    """A snapshot manager for this test; afterwards: stopped, no segment or socket left behind."""
    before = segments()
    h = start_manager(job_id=f"test-{os.getpid()}")
    yield h
    h.end_job()
    assert h.proc.poll() is not None, "manager still running"
    assert segments() == before, "shared-memory segments left behind"
    assert not os.path.exists(os.path.dirname(h.socket_path))
