"""The grant-health settings: bounds, one line per bad variable, and what they default to."""

from pathlib import Path

import pytest

from token_broker.settings import ConfigurationError, load_settings


@pytest.fixture(autouse=True)
def no_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)


def test_defaults_follow_the_issuer_and_the_redirect_uri() -> None:
    google = load_settings(google_client_id="web.apps.googleusercontent.com")
    assert google.google_publishing_status == "production"
    assert google.effective_risc_configuration_url == (
        "https://accounts.google.com/.well-known/risc-configuration"
    )
    assert google.risc_api_base == "https://risc.googleapis.com"
    assert google.risc_audience_set == {"web.apps.googleusercontent.com"}
    assert google.effective_risc_receiver_url is None
    sandbox = load_settings(
        issuer="http://127.0.0.1:8000/sandbox",
        redirect_uri="https://broker.example/v1/oauth/callback",
        google_client_id="web",
        risc_audiences="android.apps.googleusercontent.com, ios.apps.googleusercontent.com",
    )
    assert sandbox.effective_risc_configuration_url == (
        "http://127.0.0.1:8000/sandbox/.well-known/risc-configuration"
    )
    assert sandbox.effective_risc_receiver_url == "https://broker.example/v1/risc"
    assert sandbox.risc_audience_set == {
        "web",
        "android.apps.googleusercontent.com",
        "ios.apps.googleusercontent.com",
    }


def test_bad_values_are_named_one_line_each(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "GOOGLE_PUBLISHING_STATUS": "beta",
        "EXPIRING_NOTICE_SECONDS": "10",
        "GRANT_HEALTH_INTERVAL_SECONDS": "0",
        "RISC_MAX_AGE_SECONDS": "99999999",
        "RISC_CONFIGURATION_URL": "ftp://example",
        "RISC_RECEIVER_URL": "not a url",
        "RISC_API_BASE": "risc.googleapis.com",
    }.items():
        monkeypatch.setenv(f"TOKEN_BROKER_{name}", value)
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    named = sorted(line.split(":", 1)[0] for line in raised.value.problems)
    assert named == sorted(
        f"TOKEN_BROKER_{name}"
        for name in (
            "GOOGLE_PUBLISHING_STATUS", "EXPIRING_NOTICE_SECONDS",
            "GRANT_HEALTH_INTERVAL_SECONDS", "RISC_MAX_AGE_SECONDS", "RISC_CONFIGURATION_URL",
            "RISC_RECEIVER_URL", "RISC_API_BASE",
        )
    )  # fmt: skip
