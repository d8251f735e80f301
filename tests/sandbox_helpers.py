"""Driving the sandbox provider the way a browser would: consent by form post."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx


async def consent(
    http: httpx.AsyncClient,
    authorization_url: str,
    *,
    email: str = "alice@example.com",
    decision: str = "allow",
    granted_scopes: list[str] | None = None,
) -> dict[str, str]:
    """Post the consent form for `authorization_url`; returns the redirect's query parameters."""
    parts = urlsplit(authorization_url)
    params = {k: v[0] for k, v in parse_qs(parts.query).items()}
    page = await http.get(authorization_url)
    assert page.status_code == 200, page.text
    form: dict[str, str | list[str]] = {**params, "email": email, "decision": decision}
    if granted_scopes is not None:
        form["granted_scope"] = granted_scopes
    endpoint = f"{parts.scheme}://{parts.netloc}{parts.path}"
    response = await http.post(endpoint, data=form)
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()} | {
        "_redirect": location.split("?")[0]
    }
