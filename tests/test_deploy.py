"""The compose proxy in front of the replicas bounds connections as the broker does."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from token_broker.settings import Settings
from token_broker.web.serving import KEEP_ALIVE_SECONDS

ROOT = Path(__file__).parents[1]
COMPOSE = ROOT / "docker-compose.yml"
PROXY = ROOT / "deploy" / "proxy.conf"


def proxy_config() -> str:
    mounted = yaml.safe_load(COMPOSE.read_text())["services"]["proxy"]["volumes"]
    assert any(volume.startswith("./deploy/proxy.conf:") for volume in mounted)
    return PROXY.read_text()


def seconds(config: str, directive: str) -> float:
    found = re.findall(rf"^\s*{directive}\s+(\d+)s;", config, re.MULTILINE)
    assert found, f"{directive} is not set"
    return float(found[-1])


def test_the_proxy_timeouts_match_the_brokers() -> None:
    config = proxy_config()
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert seconds(config, "client_header_timeout") == defaults.request_head_timeout_seconds
    assert seconds(config, "client_body_timeout") == defaults.request_body_timeout_seconds
    assert seconds(config, "keepalive_timeout") <= defaults.request_head_timeout_seconds
    # The proxy gives up a kept-alive connection to a replica before the replica does.
    upstream = config.split("server {")[0]
    assert seconds(upstream, "keepalive_timeout") < KEEP_ALIVE_SECONDS


def test_the_proxy_names_the_client_and_the_broker_believes_only_it() -> None:
    config = proxy_config()
    assert "X-Forwarded-For $remote_addr;" in config
    assert "proxy_add_x_forwarded_for" not in config
    broker = yaml.safe_load(COMPOSE.read_text())["x-broker"]["environment"]
    assert broker["FORWARDED_ALLOW_IPS"] == "*"


def test_the_hardening_settings_and_problems_are_documented() -> None:
    from token_broker.errors import KeyUnavailable, PayloadTooLarge, RateLimited

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for variable in (
        "FORCED_REFRESH_INTERVAL_SECONDS",
        "REQUEST_HEAD_TIMEOUT_SECONDS",
        "REQUEST_BODY_TIMEOUT_SECONDS",
        "MAX_CONNECTIONS",
        "KEY_LOOKUPS_PER_SECOND",
    ):
        assert (
            f"| `TOKEN_BROKER_{variable}`" in readme or f"`TOKEN_BROKER_{variable}` |" in readme
        ), variable
    for problem in (KeyUnavailable, RateLimited):
        assert f"| `{problem.code}` | {problem.status} |" in readme, problem.code
    assert f"`{PayloadTooLarge.code}`" in readme
