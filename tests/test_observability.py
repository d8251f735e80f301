import json
import logging

import pytest

from token_broker.observability.logs import JsonFormatter, RedactingFilter, redact


@pytest.mark.parametrize(
    "text",
    [
        "token ya29.a0AfB_byC-S3NT1NEL",
        "refresh 1//0gLx-S3NT1NEL",
        "key tbk_S3NT1NEL" + "x" * 35,
        "Authorization: Bearer S3NT1NEL.def-ghi",
        "id eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.S3NT1NEL",
        'body {"access_token": "S3NT1NEL-1", "expires_in": 3599}',
        "form grant_type=refresh_token&refresh_token=S3NT1NEL-2&client_secret=S3NT1NEL-3",
        "callback ?code=4/0Adeu5B-S3NT1NEL&state=xyz",
    ],
)
def test_redaction_masks_secret_shapes_and_fields(text: str) -> None:
    masked = redact(text)
    assert "[redacted]" in masked
    assert "S3NT1NEL" not in masked


def test_redaction_keeps_ordinary_text() -> None:
    text = "refreshed account 1234 in 120 ms (status=200)"
    assert redact(text) == text


def test_filter_redacts_message_args_extras_and_tracebacks() -> None:
    record = logging.LogRecord(
        "t", logging.ERROR, __file__, 1, "got %s", ("ya29.leaky-token",), None
    )
    record.upstream = "refresh_token=1//leaky"
    try:
        raise ValueError("bad ya29.in-exception")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    RedactingFilter().filter(record)
    line = JsonFormatter().format(record)
    assert "leaky" not in line
    assert "in-exception" not in line
    entry = json.loads(line)
    assert entry["message"] == "got [redacted]"
    assert "ValueError" in entry["exception"]
