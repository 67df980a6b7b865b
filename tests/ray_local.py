"""A real local Ray cluster for the Ray tests (SERVING.md §10.6): started in the test process on loopback."""

import os
from contextlib import contextmanager

from live import missing

from engine.ray_extra import INSTALL


def require_ray():
    """The ray module; without the extra, `live.missing` (a failure under CI=true, where .ci/run installs it, a skip
    saying so elsewhere), at import time, so for the whole module."""
    try:
        import ray
    except ImportError:
        missing(f"needs the optional extra ray: {INSTALL}")
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
