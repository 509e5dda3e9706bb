"""The `http:` config section: defaults, and a bad value stops start-up with the field and the reason."""

from __future__ import annotations

import pytest

from node.api.secret_hash import hash_password, token_digest
from node.config import parse_config
from node.errors import ConfigError

pytestmark = pytest.mark.unit

DIGEST = token_digest("a-token-of-twenty-chars")


def test_http_defaults_are_off_loopback_and_identity_hidden() -> None:
    http = parse_config({}).http
    assert not http.enabled and http.bind_address == "127.0.0.1"
    assert not http.show_patient_identity and http.auth.open_health_on_loopback
    assert http.auth.credentials == [] and http.priority_threshold == 0.5


@pytest.mark.parametrize(
    ("http", "field", "message"),
    [
        ({"viewer_url_template": "http://viewer/{uid}"}, "http.viewer_url_template", "{study_uid}"),
        ({"priority_threshold": 1.5}, "http.priority_threshold", "less than or equal to 1"),
        ({"auth": {"mode": "oauth"}}, "http.auth.mode", "'token' or 'basic'"),
        (
            {"auth": {"credentials": [{"name": "a", "secret_hash": "sha256:abc"}]}},
            "http.auth.credentials.0.secret_hash",
            "ainode hash-secret",
        ),
        (
            {"auth": {"credentials": [{"name": "a", "secret_hash": DIGEST, "role": "admin"}]}},
            "http.auth.credentials.0.role",
            "'viewer', 'operator' or 'sender'",
        ),
        ({"stow_calling_ae": "WAY-TOO-LONG-AE-TITLE"}, "http.stow_calling_ae", "AE title"),
        ({"bind_address": "localhost"}, "http.bind_address", "does not appear to be an IPv4 or IPv6 address"),
        ({"tokens": ["abc"]}, "http.tokens", "Extra inputs are not permitted"),
    ],
)
def test_bad_http_config_names_the_field(http: dict[str, object], field: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"http": http})
    assert field in str(err.value) and message in str(err.value), str(err.value)


def test_two_credentials_with_one_token_are_refused_at_start_up() -> None:
    same = [{"name": "a", "secret_hash": DIGEST}, {"name": "b", "secret_hash": DIGEST}]
    with pytest.raises(ConfigError, match=r"http\.auth: .*'b' has the same secret"):
        parse_config({"http": {"auth": {"credentials": same}}})


def test_a_clear_text_secret_is_refused_naming_the_field_and_how_to_convert() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"http": {"auth": {"credentials": [{"name": "a", "secret": "a-clear-text-secret"}]}}})
    message = str(err.value)
    assert "http.auth.credentials.0.secret: " in message and "clear-text secrets are refused" in message
    assert "ainode hash-secret" in message and "secret_hash" in message
    assert "a-clear-text-secret" not in message  # the refusal does not echo the secret


def test_each_mode_takes_its_own_hash_form() -> None:
    """basic: argon2id only (a fast digest would not protect a guessable password); token: sha256 digests."""
    argon = hash_password("a-password")
    with pytest.raises(ConfigError, match=r"mode basic needs an argon2id password hash"):
        parse_config({"http": {"auth": {"mode": "basic", "credentials": [{"name": "a", "secret_hash": DIGEST}]}}})
    with pytest.raises(ConfigError, match=r"mode token needs a sha256:HEX token digest"):
        parse_config({"http": {"auth": {"mode": "token", "credentials": [{"name": "a", "secret_hash": argon}]}}})
    with pytest.raises(ConfigError, match=r"secret_hash: .*not an argon2id hash"):
        parse_config(
            {
                "http": {
                    "auth": {
                        "mode": "basic",
                        "credentials": [{"name": "a", "secret_hash": argon.replace("m=65536", "m=lots")}],
                    }
                }
            }
        )
    basic = parse_config({"http": {"auth": {"mode": "basic", "credentials": [{"name": "a", "secret_hash": argon}]}}})
    assert basic.http.auth.credentials[0].secret_hash.get_secret_value() == argon


def test_secrets_do_not_reach_the_worker_processes() -> None:
    from node.work.supervisor import worker_payload

    config = parse_config({"http": {"auth": {"credentials": [{"name": "a", "secret_hash": DIGEST}]}}})
    payload = worker_payload(config)  # what a spawned worker receives: its settings, not the whole config
    assert DIGEST not in str(payload) and "http" not in payload
