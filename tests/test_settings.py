import json
from pathlib import Path

import pytest

from token_broker.settings import (
    GMAIL_READONLY_SCOPE,
    GOOGLE_AUTH_URI,
    GOOGLE_TOKEN_URI,
    ConfigurationError,
    load_settings,
)

SECRETS_FILE = {
    "web": {
        "client_id": "123-abc.apps.googleusercontent.com",
        "client_secret": "GOCSPX-from-file-secret",
        "redirect_uris": ["https://broker.example/v1/oauth/callback", "https://other/cb"],
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://accounts.google.com/o/oauth2/token",
    }
}


@pytest.fixture
def secrets_file(tmp_path: Path) -> Path:
    path = tmp_path / "client_secrets.json"
    path.write_text(json.dumps(SECRETS_FILE))
    return path


@pytest.fixture(autouse=True)
def no_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env from the working directory


def test_reads_google_client_secrets_format(secrets_file: Path) -> None:
    settings = load_settings(google_client_secrets_file=secrets_file)
    assert settings.google_client_id == "123-abc.apps.googleusercontent.com"
    assert settings.google_client_secret is not None
    assert settings.google_client_secret.get_secret_value() == "GOCSPX-from-file-secret"
    assert settings.redirect_uri == "https://broker.example/v1/oauth/callback"
    # Old files name the v1 endpoints; the broker upgrades them to the current ones.
    assert settings.auth_uri == GOOGLE_AUTH_URI
    assert settings.token_uri == GOOGLE_TOKEN_URI


def test_environment_overrides_the_file(
    secrets_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKEN_BROKER_GOOGLE_CLIENT_SECRETS_FILE", str(secrets_file))
    monkeypatch.setenv("TOKEN_BROKER_GOOGLE_CLIENT_ID", "env-client")
    monkeypatch.setenv("TOKEN_BROKER_REDIRECT_URI", "https://env.example/cb")
    settings = load_settings()
    assert settings.google_client_id == "env-client"
    assert settings.redirect_uri == "https://env.example/cb"
    assert settings.google_client_secret is not None  # still from the file


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TOKEN_BROKER_GOOGLE_CLIENT_ID=from-dotenv\n")
    assert load_settings().google_client_id == "from-dotenv"


def test_list_settings_parse_from_plain_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKEN_BROKER_SCOPES", f"openid email {GMAIL_READONLY_SCOPE}")
    monkeypatch.setenv(
        "TOKEN_BROKER_RETURN_TO_ALLOWLIST", "https://a.example/done, https://b.example/x"
    )
    settings = load_settings()
    assert settings.scopes == ("openid", "email", GMAIL_READONLY_SCOPE)
    assert settings.return_to_allowlist == ("https://a.example/done", "https://b.example/x")


def test_defaults_are_googles_current_endpoints() -> None:
    settings = load_settings()
    assert settings.auth_uri == "https://accounts.google.com/o/oauth2/v2/auth"
    assert settings.token_uri == "https://oauth2.googleapis.com/token"
    assert settings.revoke_uri == "https://oauth2.googleapis.com/revoke"
    assert settings.jwks_uri == "https://www.googleapis.com/oauth2/v3/certs"
    assert settings.gmail_api_base == "https://gmail.googleapis.com"
    assert settings.database_url.startswith("sqlite+aiosqlite:///")
    assert settings.scopes == (
        "openid",
        "email",
        "profile",
        "https://www.googleapis.com/auth/gmail.readonly",
    )


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("TOKEN_BROKER_DATABASE_URL", "mysql://x", "postgresql+asyncpg://"),
        ("TOKEN_BROKER_TOKEN_URI", "not a url", "absolute http(s) URL"),
        ("TOKEN_BROKER_STATE_TTL_SECONDS", "5", "greater than or equal to 30"),
        ("TOKEN_BROKER_RETURN_TO_ALLOWLIST", "javascript:alert(1)", "http(s) URL prefixes"),
        ("TOKEN_BROKER_ENVIRONMENT", "staging", "production"),
    ],
)
def test_wrong_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    message = str(raised.value)
    assert variable in message
    assert expected in message


def test_missing_client_secrets_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_settings(google_client_secrets_file=tmp_path / "nope.json")
    assert "TOKEN_BROKER_GOOGLE_CLIENT_SECRETS_FILE" in str(raised.value)
    assert "nope.json" in str(raised.value)


def test_client_secrets_file_without_web_object(tmp_path: Path) -> None:
    path = tmp_path / "installed.json"
    path.write_text(json.dumps({"installed": {"client_id": "x"}}))
    with pytest.raises(ConfigurationError, match='no "web" object'):
        load_settings(google_client_secrets_file=path)


def test_serving_problems_name_each_missing_variable() -> None:
    problems = "\n".join(load_settings().serving_problems())
    for variable in (
        "TOKEN_BROKER_ENCRYPTION_KEYS",
        "TOKEN_BROKER_GOOGLE_CLIENT_ID",
        "TOKEN_BROKER_GOOGLE_CLIENT_SECRET",
        "TOKEN_BROKER_REDIRECT_URI",
    ):
        assert variable in problems


def test_development_does_not_require_a_keyring(secrets_file: Path) -> None:
    settings = load_settings(environment="development", google_client_secrets_file=secrets_file)
    assert settings.serving_problems() == []


def test_required_scopes_are_checked_through_the_equivalence_rule(
    secrets_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """email is …/userinfo.email: requestable under either spelling; a real gap still counts."""
    monkeypatch.setenv("TOKEN_BROKER_SCOPES", f"openid email profile {GMAIL_READONLY_SCOPE}")
    monkeypatch.setenv(
        "TOKEN_BROKER_REQUIRED_SCOPES",
        f"https://www.googleapis.com/auth/userinfo.email {GMAIL_READONLY_SCOPE}",
    )
    settings = load_settings(environment="development", google_client_secrets_file=secrets_file)
    assert settings.serving_problems() == []
    monkeypatch.setenv("TOKEN_BROKER_REQUIRED_SCOPES", "https://mail.google.com/")
    settings = load_settings(environment="development", google_client_secrets_file=secrets_file)
    (problem,) = settings.serving_problems()
    assert "TOKEN_BROKER_SCOPES" in problem
    assert "https://mail.google.com/" in problem


def test_secrets_do_not_appear_in_repr_or_errors(
    secrets_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(
        google_client_secrets_file=secrets_file, encryption_keys="k1:" + "A" * 44
    )
    text = repr(settings) + str(settings)
    assert "GOCSPX-from-file-secret" not in text
    assert "A" * 44 not in text
    monkeypatch.setenv("TOKEN_BROKER_HTTP_TIMEOUT_SECONDS", "GOCSPX-leak")
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert "GOCSPX-leak" not in str(raised.value)


PUSH = {
    "gmail_push_topic": "projects/broker-project/topics/gmail",
    "gmail_push_audience": "https://broker.example/v1/gmail/push",
    "gmail_push_service_account": "push@broker-project.iam.gserviceaccount.com",
    "webhook_url": "https://hooks.example/broker",
    "webhook_secret": "whsec",
}


def test_push_needs_its_authentication_and_a_webhook() -> None:
    assert load_settings(**PUSH).gmail_push_enabled
    assert not load_settings().gmail_push_enabled
    for missing, named in (
        ("gmail_push_audience", "TOKEN_BROKER_GMAIL_PUSH_AUDIENCE"),
        ("gmail_push_service_account", "TOKEN_BROKER_GMAIL_PUSH_SERVICE_ACCOUNT"),
        ("webhook_url", "TOKEN_BROKER_WEBHOOK_URL"),
    ):
        with pytest.raises(ConfigurationError) as caught:
            load_settings(**{k: v for k, v in PUSH.items() if k != missing})
        assert named in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("gmail_push_topic", "my-topic"),
        ("gmail_push_topic", "projects/Bad_Project/topics/gmail"),
        ("gmail_push_service_account", "not-an-email"),
        ("gmail_push_coalesce_seconds", "-1"),
        ("gmail_push_fallback_seconds", "0"),
        ("gmail_watch_renewals_per_minute", "0"),
    ],
)
def test_push_settings_are_validated(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(**{**PUSH, name: value})
    assert f"TOKEN_BROKER_{name.upper()}" in str(caught.value)
