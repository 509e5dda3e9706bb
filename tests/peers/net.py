"""Networking helpers for the tests: the node's own (one implementation), under the names tests use."""

from __future__ import annotations

from node.netutil import free_port, nodelay_env, port_open, wait_until

dcmtk_env = nodelay_env

__all__ = ["dcmtk_env", "free_port", "port_open", "wait_until"]
