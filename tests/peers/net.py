"""Networking helpers for the tests: the harness's (demo.netutil, one implementation), under the names tests use."""

from __future__ import annotations

from demo.netutil import free_port, nodelay_env, port_open, wait_until

dcmtk_env = nodelay_env

__all__ = ["dcmtk_env", "free_port", "port_open", "wait_until"]
