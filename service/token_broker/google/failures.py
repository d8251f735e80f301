"""What the provider did wrong, as the problem a caller sees: the one mapping.

Each step that calls Google (code exchange, identity, refresh, Gmail) fails in the
same few ways: the provider refused the broker's client, refused the request,
did not answer in time, or answered something unusable. The services hand any
such failure here and get back the documented problem; the few that need an
`authorization_url` add it themselves.
"""

from __future__ import annotations

import logging
from typing import Literal

from token_broker.errors import (
    BrokerError,
    CodeExchangeFailed,
    ProviderRejectedClient,
    ReauthorizationRequired,
    UnknownLabel,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from token_broker.google.gmail import GmailError, GmailUnknownLabel
from token_broker.google.oauth import IdTokenInvalid, OAuthError
from token_broker.google.transport import UpstreamProtocolError
from token_broker.kit.retry import RetriesExhausted, TransientError

log = logging.getLogger("token_broker.google")

Step = Literal["code_exchange", "identity", "refresh", "gmail", "risc"]
# What a call to the provider raises when it fails; `except UPSTREAM_FAILURES` catches it.
UPSTREAM_FAILURES: tuple[type[Exception], ...] = (
    OAuthError, IdTokenInvalid, GmailError, UpstreamProtocolError, TransientError,
    RetriesExhausted,
)  # fmt: skip

_NO_ANSWER: dict[Step, str] = {
    "code_exchange": "The provider's token endpoint did not answer; try the code again shortly.",
    "identity": "The provider did not answer the identity request.",
    "refresh": "The provider's token endpoint did not answer in time.",
    "gmail": "Gmail did not answer in time.",
    "risc": "Google's RISC configuration or signing keys could not be fetched; send it again.",
}
_UNUSABLE: dict[Step, str] = {
    "code_exchange": "The provider's token endpoint misbehaved",
    "identity": "The provider's identity answer was unusable",
    "refresh": "The provider's token endpoint misbehaved",
    "gmail": "Gmail's answer was unusable",
    "risc": "Google's RISC configuration or signing keys were unusable",
}


def problem_for(error: Exception, step: Step) -> BrokerError:
    """The documented problem for a failed call to the provider during `step`."""
    if isinstance(error, OAuthError):
        if error.error == "invalid_client":
            log.error("the provider rejected the broker's client credentials (invalid_client)")
            return ProviderRejectedClient()
        if step == "refresh":
            return ReauthorizationRequired(
                f"The provider refused the refresh ({error.error}); the user must sign in again."
            )
        return CodeExchangeFailed(f"The provider answered {error.error}.")
    if isinstance(error, RetriesExhausted):
        if step == "gmail" and error.last.kind == "rate_limited":
            return UpstreamRateLimited(retry_after=error.retry_after)
        return UpstreamUnavailable(_NO_ANSWER[step], retry_after=error.retry_after)
    if isinstance(error, TransientError):
        return UpstreamUnavailable(_NO_ANSWER[step], retry_after=error.suggested_retry_after())
    if isinstance(error, GmailUnknownLabel):
        return UnknownLabel(
            f"Gmail has no label {error.label_id!r} in this mailbox; labelIds takes label ids "
            "(INBOX, Label_12), not label names.",
            label_id=error.label_id,
        )
    if isinstance(error, GmailError):
        return UpstreamError(
            f"Gmail refused the request ({error.status} {error.reason}).",
            gmail_reason=error.reason,
        )
    if isinstance(error, IdTokenInvalid):
        return UpstreamError(f"The provider's ID token failed validation ({error}).")
    return UpstreamError(f"{_UNUSABLE[step]}: {error}")
