"""`ainode serve` and `ainode check-config`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.config import NodeConfig, configuration_warnings, load_config
from node.errors import ConfigError

if TYPE_CHECKING:
    from node.index.db import Database


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML configuration file (default: embedded defaults)")
    p.add_argument("--data-dir", type=Path, help="overrides storage.data_dir")


def config_from_args(args: argparse.Namespace, extra: dict[str, dict[str, Any]] | None = None) -> NodeConfig:
    overrides: dict[str, dict[str, Any]] = {"storage": {"data_dir": getattr(args, "data_dir", None)}}
    for section, values in (extra or {}).items():
        overrides.setdefault(section, {}).update(values)
    return load_config(args.config, overrides)


def open_index(args: argparse.Namespace) -> Database:
    """The index of the configured data dir (for commands that read it while the node runs)."""
    from node.work.worker import index_path, open_configured_index

    config = config_from_args(args)
    path = index_path(config)
    if config.index.backend == "sqlite" and not path.exists():
        raise ConfigError(f"no index at {path} (has the node run with this data dir?)")
    return open_configured_index(config)


def _parse_allow(values: list[str] | None) -> list[dict[str, str | None]] | None:
    if not values:
        return None
    callers: list[dict[str, str | None]] = []
    for value in values:
        aet, _, host = value.partition("@")
        callers.append({"ae_title": aet, "host": host or None})
    return callers


def _serve(args: argparse.Namespace) -> int:
    from node.logging_setup import configure_logging
    from node.service import NodeService

    dicom: dict[str, Any] = {"ae_title": args.aet, "port": args.port, "bind_address": args.bind}
    allowed = _parse_allow(args.allow)
    if allowed is not None:
        dicom["allowed_callers"] = allowed
    extra: dict[str, dict[str, Any]] = {"dicom": dicom, "workers": {"processes": args.workers}}
    if args.http_port is not None:  # --http-port N also turns the HTTP API on
        extra["http"] = {"port": args.http_port, "enabled": True}
    config = config_from_args(args, extra)  # a ConfigError here is reported by node.cli.main
    configure_logging(config.logging.level, config.logging.format)
    service = NodeService(config)
    import structlog

    for warning in configuration_warnings(config):
        print(f"ainode: warning: {warning}", file=sys.stderr)
        structlog.get_logger(__name__).warning("configuration_warning", warning=warning)
    try:
        service.run_until_signalled()
    except ConfigError as exc:  # e.g. the HTTP port is taken: found only when the server binds
        print(f"ainode: {exc}", file=sys.stderr)
        service.stop()
        return 2
    return 0


def _worker(args: argparse.Namespace) -> int:
    from node.logging_setup import configure_logging
    from node.work.worker import check_worker_device

    config = config_from_args(args)
    if config.dispatch.engine != "celery":
        raise ConfigError("dispatch.engine: `ainode worker` needs celery (embedded workers run inside `serve`)")
    check_worker_device(config.workers)
    configure_logging(config.logging.level, config.logging.format)
    from node.work.celery_worker import run_celery_worker

    run_celery_worker(config, args.worker_id)
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from node.work.worker import check_worker_device

    config = load_config(args.file)
    check_worker_device(config.workers)  # what `serve` would refuse on this machine (workers.device: cuda)
    print(
        f"{args.file}: OK (AE {config.dicom.ae_title} on port {config.dicom.port}, "
        f"{len(config.dicom.allowed_callers)} allowed caller(s), data in {config.storage.data_dir})"
    )
    for warning in configuration_warnings(config):
        print(f"WARNING: {warning}", file=sys.stderr)
    if not config.dicom.allowed_callers and not config.dicom.accept_any_caller:
        print(f"{args.file}: this node refuses every DICOM caller", file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the node: DICOM SCP, completeness, workers")
    add_config_arguments(p)
    p.add_argument("--aet", help="overrides dicom.ae_title")
    p.add_argument("--port", type=int, help="overrides dicom.port")
    p.add_argument("--bind", help="overrides dicom.bind_address")
    p.add_argument("--allow", action="append", metavar="AET[@HOST]", help="allowed caller (repeatable)")
    p.add_argument("--workers", type=int, help="overrides workers.processes")
    p.add_argument("--http-port", type=int, help="serve the HTTP API on this port (overrides http.port, enables http)")
    p.set_defaults(func=_serve)

    w = sub.add_parser("worker", help="cluster mode: run jobs from the broker (dispatch.engine celery)")
    add_config_arguments(w)
    w.add_argument("--worker-id", help="this worker's name in the index's leases (default: host-pid)")
    w.set_defaults(func=_worker)

    c = sub.add_parser("check-config", help="validate a configuration file and exit")
    c.add_argument("file", type=Path)
    c.set_defaults(func=_check_config)
