"""`ainode hash-secret`: the `secret_hash:` value of an HTTP API credential, from a secret typed or piped in.

    ainode hash-secret                       # a password (auth.mode basic): asked twice on a terminal
    printf %s "$PW" | ainode hash-secret     # or read from stdin (one line; its newline is not part of it)
    ainode hash-secret --token               # a bearer token (auth.mode token): its sha256 digest
    ainode hash-secret --token --generate    # a new random token: the token on stderr, its digest on stdout

Only the hash goes to stdout, so `ainode hash-secret > file` keeps the secret itself out of the file.
"""

from __future__ import annotations

import argparse
import getpass
import sys


def _read_secret(what: str) -> str:
    if sys.stdin.isatty():
        first = getpass.getpass(f"{what}: ")
        if getpass.getpass(f"{what} again: ") != first:
            raise SystemExit("ainode: the two entries differ")
        return first
    line = sys.stdin.readline()
    return line.removesuffix("\n").removesuffix("\r")


def _hash_secret(args: argparse.Namespace) -> int:
    from node.api.secret_hash import generate_token, hash_password, hash_token

    if args.generate and not args.token:
        print("ainode: --generate makes tokens: add --token", file=sys.stderr)
        return 2
    if args.generate:
        token = generate_token()
        print(f"token (give it to the client; it is not stored anywhere): {token}", file=sys.stderr)
        print(hash_token(token))
        return 0
    secret = _read_secret("token" if args.token else "password")
    try:
        print(hash_token(secret) if args.token else hash_password(secret))
    except ValueError as exc:
        print(f"ainode: {exc}", file=sys.stderr)
        return 2
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "hash-secret",
        help="print the secret_hash of an HTTP API credential (argon2id password, or --token: sha256 digest)",
    )
    p.add_argument("--token", action="store_true", help="a bearer token (http.auth.mode token), not a password")
    p.add_argument("--generate", action="store_true", help="with --token: make a random token (printed on stderr)")
    p.set_defaults(func=_hash_secret)
