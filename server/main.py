"""`engine-serve`: load checkpoints and serve the HTTP API with uvicorn (one worker: the engine is a singleton).

Settings come from `TRM_*` environment variables (server/settings.py); flags override them.
"""

from __future__ import annotations

import argparse
import logging

import torch
import uvicorn
from pydantic import ValidationError

from server.app import create_app
from server.logs import setup_logging
from server.protocol import IdleTimeoutH11Protocol
from server.settings import Settings
from server.shutdown import DrainingServer

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
FLAGS = {  # flag -> (settings field, type, help)
    "--host": ("host", str, "bind address (TRM_HOST; default 127.0.0.1, use 0.0.0.0 in a container)"),
    "--port": ("port", int, "port (TRM_PORT; default 8000)"),
    "--checkpoint-root": ("checkpoint_root", str, "where relative checkpoint names are looked up"),
    "--device": ("device", str, "auto, cpu, cuda, cuda:1 ..."),
    "--dtype": ("dtype", str, "compute dtype: auto, float32, bfloat16"),
    "--max-batch": ("max_batch", int, "rows per engine step"),
    "--max-queued-requests": ("max_queued_requests", int, "admission cap on requests (429 beyond)"),
    "--max-queued-rows": ("max_queued_rows", int, "admission cap on rows, a request counting its K"),
    "--max-rollouts": ("max_rollouts", int, "largest K a request may ask for"),
    "--max-steps": ("max_steps", int, "largest D a request may ask for"),
    "--max-timeout": ("max_timeout_s", float, "largest timeout_s a request may ask for"),
    "--default-timeout": ("default_timeout_s", float, "deadline of requests that name none"),
    "--max-body-bytes": ("max_body_bytes", int, "request body limit (413 beyond)"),
    "--stream-max-events-per-s": ("stream_max_events_per_s", float, "progress events a streamed request gets per s"),
    "--drain-timeout": ("drain_timeout_s", float, "seconds to finish admitted work on shutdown"),
    "--idle-timeout": ("idle_timeout_s", float, "seconds a connection may stay open without a request"),
    "--watchdog": ("watchdog_s", float, "readiness fails when an engine makes no step this long with work"),
    "--threads": ("threads", int, "torch CPU threads (default: torch's; 1 on a machine shared with other jobs)"),
    "--log-level": ("log_level", str, "debug, info, warning"),
}


def parse(argv: list[str] | None = None) -> Settings:
    return settings_from(arguments(argv))


def arguments(argv: list[str] | None = None) -> dict:
    """The flags given (those left out are absent, so the environment's settings stand)."""
    p = argparse.ArgumentParser(prog="engine-serve", description=__doc__)
    p.add_argument(
        "--checkpoint",
        action="append",
        dest="checkpoints",
        metavar="DIR",
        help="a checkpoint directory (repeatable); a GRAM generator serves /generate. Default: checkpoints/sudoku-trm "
        "and, when present, checkpoints/sudoku-gram-gen (under --checkpoint-root)",
    )
    for flag, (field, kind, help) in FLAGS.items():
        p.add_argument(flag, dest=field, type=kind, help=help)
    p.add_argument(
        "--api-key",
        action="append",
        dest="api_key",
        metavar="KEY",
        help="require Authorization: Bearer KEY (repeatable); other users see it in `ps`: prefer TRM_API_KEY "
        "(comma-separated) or --api-keys-file",
    )
    p.add_argument("--api-keys-file", dest="api_keys_file", help="TOML file of named keys with quotas (README)")
    p.add_argument(
        "--metrics-auth", action="store_const", const=True, dest="metrics_auth", help="/metrics needs a key too"
    )
    return {k: v for k, v in vars(p.parse_args(argv)).items() if v is not None}


def settings_from(args: dict) -> Settings:
    """Settings from the environment and the flags; a refused one exits naming it (never echoing its value: keys)."""
    try:
        return Settings(**args)
    except ValidationError as e:
        faults = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg']}" for err in e.errors())
        raise SystemExit(f"engine-serve: {faults}") from None


def main(argv: list[str] | None = None) -> None:
    args = arguments(argv)
    settings = settings_from(args)
    setup_logging(settings.log_level)
    if args.get("api_key"):
        logging.getLogger("server").warning(
            "an API key given with --api-key shows in the process list (`ps`) to every user of this machine: "
            "prefer TRM_API_KEY or --api-keys-file"
        )
    if settings.threads:
        torch.set_num_threads(settings.threads)
    for path, required in settings.checkpoint_paths():
        if required and not (path / "config.json").is_file():
            raise SystemExit(f"engine-serve: {path} is not a checkpoint directory (no config.json)")
    try:
        app = create_app(settings)
    except ValueError as e:  # e.g. a malformed API keys file
        raise SystemExit(f"engine-serve: {e}") from None
    if not app.state.keyring.enabled and settings.host not in LOOPBACK:
        logging.getLogger("server").warning(
            f"no API key configured and bound to {settings.host}: anyone who can reach port {settings.port} may use "
            "the service (TRM_API_KEY or --api-keys-file)"
        )
    config = uvicorn.Config(app, host=settings.host, port=settings.port, **uvicorn_options(settings))
    DrainingServer(config, app, settings.drain_timeout_s).run()


def uvicorn_options(settings: Settings) -> dict:
    """uvicorn.Config options beyond the app and the address (tests build their live servers with them too)."""
    return dict(
        workers=1,
        log_config=None,
        access_log=False,
        http=IdleTimeoutH11Protocol,
        timeout_keep_alive=settings.idle_timeout_s,
        timeout_graceful_shutdown=int(settings.drain_timeout_s) or None,
    )


if __name__ == "__main__":
    main()
