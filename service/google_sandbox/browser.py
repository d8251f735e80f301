"""Driving the sandbox's consent page the way a browser would, with a form post.

For tests, benchmarks and demos: Google itself has no such shortcut.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx


class ConsentFailed(Exception):
    pass


async def consent(
    http: httpx.AsyncClient,
    authorization_url: str,
    *,
    email: str = "alice@example.com",
    decision: str = "allow",
    granted_scopes: list[str] | None = None,
) -> dict[str, str]:
    """Post the consent form for `authorization_url`; returns the redirect's query parameters.

    The redirect target itself is returned as `_redirect`.
    """
    parts = urlsplit(authorization_url)
    params = {k: v[0] for k, v in parse_qs(parts.query).items()}
    page = await http.get(authorization_url)
    if page.status_code != 200:
        raise ConsentFailed(f"consent page answered {page.status_code}")
    form: dict[str, str | list[str]] = {**params, "email": email, "decision": decision}
    if granted_scopes is not None:
        form["granted_scope"] = granted_scopes
    response = await http.post(f"{parts.scheme}://{parts.netloc}{parts.path}", data=form)
    if response.status_code != 302:
        raise ConsentFailed(f"consent answered {response.status_code}, not a redirect")
    location = response.headers["location"]
    answer = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    return answer | {"_redirect": location.split("?", maxsplit=1)[0]}
