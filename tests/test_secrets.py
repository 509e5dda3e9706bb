"""No clear-text secrets in the config: `ainode hash-secret` makes the hashes, a clear-text `secret:` stops
check-config and serve naming the field and how to convert, and the secrets the node sends may come from
files (``password_file:``, ``token_file:``), as Docker secrets and systemd credentials deliver them."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import argon2
import pytest
import yaml

from demo.node_process import REPO_ROOT
from node.config import parse_config
from node.config.destinations import BasicAuth, OrthancRestDestinationConfig, StowRsDestinationConfig
from node.errors import ConfigError

pytestmark = pytest.mark.unit


def _ainode(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", *args], input=stdin, capture_output=True, text=True, cwd=REPO_ROOT, timeout=60
    )


def test_hash_secret_prints_an_argon2id_hash_of_the_password_read_from_stdin() -> None:
    done = _ainode("hash-secret", stdin="correct horse battery\n")
    assert done.returncode == 0, done.stderr
    printed = done.stdout.strip()
    assert printed.startswith("$argon2id$") and "correct horse" not in done.stdout + done.stderr
    assert argon2.PasswordHasher().verify(printed, "correct horse battery")  # the newline is not part of it
    # The hash works in a basic-mode config as printed.
    parse_config({"http": {"auth": {"mode": "basic", "credentials": [{"name": "a", "secret_hash": printed}]}}})
    short = _ainode("hash-secret", stdin="short\n")
    assert short.returncode == 2 and "at least 8 characters" in short.stderr and not short.stdout


def test_hash_secret_token_digests_and_generates() -> None:
    token = "a-long-enough-token-0123456789"
    done = _ainode("hash-secret", "--token", stdin=token)
    assert done.returncode == 0 and done.stdout.strip() == "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    assert _ainode("hash-secret", "--token", stdin="too-short").returncode == 2
    generated = _ainode("hash-secret", "--token", "--generate")
    assert generated.returncode == 0, generated.stderr
    new_token = generated.stderr.strip().rsplit(" ", 1)[-1]
    assert len(new_token) >= 40 and new_token not in generated.stdout  # the token on stderr only
    assert generated.stdout.strip() == "sha256:" + hashlib.sha256(new_token.encode()).hexdigest()


def test_a_clear_text_secret_stops_check_config_and_serve_saying_how_to_convert(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                # Port 0 is invalid too: should the secret check regress, serve still stops rather than runs.
                "dicom": {"allowed_callers": [{"ae_title": "PACS"}], "port": 0},
                "storage": {"data_dir": str(tmp_path / "data")},
                "http": {"auth": {"credentials": [{"name": "ops", "secret": "clear-text-password", "role": "viewer"}]}},
            }
        )
    )
    for command in (["check-config", str(config)], ["serve", "--config", str(config)]):
        done = _ainode(*command)
        assert done.returncode == 2, done.stderr
        assert "http.auth.credentials.0.secret: " in done.stderr and "ainode hash-secret" in done.stderr, done.stderr
        assert "clear-text-password" not in done.stderr


def test_destination_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "password").write_text("pacs-password\n")  # as `echo ... > file` writes it
    (tmp_path / "token").write_text("pacs-token")
    config = parse_config(
        {
            "destinations": {
                "web": {"type": "stow-rs", "url": "https://pacs.example/dicom-web",
                        "auth": {"type": "basic", "username": "ai", "password_file": str(tmp_path / "password")}},
                "web-token": {"type": "stow-rs", "url": "https://pacs.example/dicom-web",
                              "auth": {"type": "bearer", "token_file": str(tmp_path / "token")}},
                "rest": {"type": "orthanc-rest", "url": "http://orthanc:8042", "username": "ai",
                         "password_file": str(tmp_path / "password")},
            }
        }
    )  # fmt: skip
    web, web_token, rest = (config.destinations[n] for n in ("web", "web-token", "rest"))
    assert isinstance(web, StowRsDestinationConfig) and isinstance(web.auth, BasicAuth)
    assert web.auth.password.get_secret_value() == "pacs-password"
    assert isinstance(web_token, StowRsDestinationConfig) and web_token.auth is not None
    assert web_token.auth.type == "bearer" and web_token.auth.token.get_secret_value() == "pacs-token"
    assert isinstance(rest, OrthancRestDestinationConfig) and rest.password is not None
    assert rest.password.get_secret_value() == "pacs-password"
    assert "pacs-password" not in repr(config)


@pytest.mark.parametrize(
    ("destination", "message"),
    [
        ({"username": "ai", "password_file": "/nonexistent/pw"}, "password_file /nonexistent/pw: cannot read it"),
        ({"username": "ai", "password": "x", "password_file": "/etc/hostname"}, "password or password_file, not both"),
        ({"username": "ai", "password_file": "EMPTY"}, "is empty"),
    ],
)
def test_a_bad_secret_file_stops_start_up_naming_it(tmp_path: Path, destination: dict[str, str], message: str) -> None:
    (tmp_path / "empty").write_text("\n")
    if destination.get("password_file") == "EMPTY":
        destination = {**destination, "password_file": str(tmp_path / "empty")}
    with pytest.raises(ConfigError) as err:
        parse_config({"destinations": {"rest": {"type": "orthanc-rest", "url": "http://o:8042", **destination}}})
    assert "destinations.rest.orthanc-rest" in str(err.value) and message in str(err.value), str(err.value)
