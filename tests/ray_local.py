"""A real local Ray cluster for the Ray tests (SERVING.md §10.6): started in the test process on loopback."""

import os
from contextlib import contextmanager

import pytest

INSTALL = "pip install -e '.[ray]'"


def require_ray():
    """The ray module. Without the extra a Ray test fails in CI (.ci/run installs it) and skips elsewhere, saying so
    (as live.missing does for a test's other real parts; at import time, so the whole module)."""
    try:
        import ray
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"needs the optional extra ray: {INSTALL}", allow_module_level=True)
    return ray


@contextmanager
def local_cluster(**options):
    """ray.init on 2 CPUs with a small object store; shut down after."""
    ray = require_ray()
    os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", RAY_DEDUP_LOGS="0")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=256 * 1024**2,
        **options,
    )
    try:
        yield ray
    finally:
        ray.shutdown()


def pids(pattern: str) -> list[int]:
    """Process ids whose command line contains `pattern` (Ray names its workers `ray::<actor class>`)."""
    import re
    import subprocess

    found = subprocess.run(["pgrep", "-f", re.escape(pattern)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found if int(p) != os.getpid()]
