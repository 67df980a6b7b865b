"""The optional `ray` extra: the one place that imports ray for the Ray entry points (server/ray_serve.py,
engine/ray_eval.py), so that without it they say which install command is missing."""

from __future__ import annotations

INSTALL = "pip install -e '.[ray]'"


def require_ray():
    """The `ray` module, or SystemExit naming the install command."""
    try:
        import ray
    except ImportError:
        raise SystemExit(f"this needs Ray (the optional extra `ray`): {INSTALL}") from None
    return ray
