"""The `http:` config section: defaults, and a bad value stops start-up with the field and the reason."""

from __future__ import annotations

import pytest

from node.api.auth import Authenticator
from node.config import parse_config
from node.errors import ConfigError

pytestmark = pytest.mark.unit


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
        ({"auth": {"credentials": [{"name": "a", "secret": "short"}]}}, "http.auth.credentials.0.secret", "8"),
        (
            {"auth": {"credentials": [{"name": "a", "secret": "x" * 8, "role": "admin"}]}},
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


def test_two_credentials_with_one_secret_are_refused_at_start_up() -> None:
    same = [{"name": "a", "secret": "same-secret"}, {"name": "b", "secret": "same-secret"}]
    config = parse_config({"http": {"auth": {"credentials": same}}})
    with pytest.raises(ConfigError, match="same secret"):
        Authenticator(config.http)


def test_secrets_do_not_survive_the_config_dump_workers_receive() -> None:
    config = parse_config({"http": {"auth": {"credentials": [{"name": "a", "secret": "top-secret-1"}]}}})
    # by_alias: the routing conditions' `not` key (main's supervisor dumps without it; reported to the lead).
    dumped = config.model_dump(mode="json", by_alias=True)
    assert "top-secret-1" not in str(dumped)
    parse_config(dumped)  # the worker processes' round trip still validates
