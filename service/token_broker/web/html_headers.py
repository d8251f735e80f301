"""Every HTML answer the broker sends carries its protections, set in this one place.

A pure ASGI middleware around the routes: on any `text/html` response it sets a strict
`Content-Security-Policy` (nothing inline runs or styles, only the broker's own files
load, no other site may frame the page, forms post only to the broker),
`X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer` (the callback's
address holds a code and a state; no page it links to learns it) and
`X-Frame-Options: DENY` for browsers that predate `frame-ancestors`. No HTML route
can forget them. A page that needs more than the default (Swagger UI's icons are
`data:` images) sends its own policy, which is kept only if it is as strict where it
matters (`is_strict`): scripts and styles from the broker only, no unsafe or wildcard
source, and `frame-ancestors 'none'`; otherwise the default replaces it.

Apps mounted under `exempt_prefixes` (dev mode's sandbox Google) answer as themselves.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

STRICT_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_FIXED = {
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"x-frame-options": b"DENY",
}
_POLICY = b"content-security-policy"


def is_strict(policy: str) -> bool:
    """Whether a page's own policy may stand in for the default: scripts and styles from
    the broker only (nothing inline, nothing from elsewhere), no unsafe or wildcard
    source anywhere, and no framing."""
    directives: dict[str, list[str]] = {}
    for directive in policy.split(";"):
        words = directive.split()
        if words:  # the first of a repeated directive is the one that counts
            directives.setdefault(words[0].lower(), [word.lower() for word in words[1:]])
    own_only = {"'self'", "'none'"}
    scripts = directives.get("script-src", directives.get("default-src"))
    styles = directives.get("style-src", directives.get("default-src"))
    return (
        directives.get("frame-ancestors") == ["'none'"]
        and scripts is not None
        and set(scripts) <= own_only
        and styles is not None
        and set(styles) <= own_only
        and not any(
            source.startswith("'unsafe-") or "*" in source or source in ("http:", "https:")
            for sources in directives.values()
            for source in sources
        )
    )


def protected(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """An HTML response's headers with the protections set."""
    own = next((value for name, value in headers if name.lower() == _POLICY), None)
    policy = own if own is not None and is_strict(own.decode("latin-1")) else STRICT_POLICY.encode()
    kept = [(n, v) for n, v in headers if n.lower() not in _FIXED and n.lower() != _POLICY]
    return [*kept, (_POLICY, policy), *_FIXED.items()]


def is_html(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name.lower() == b"content-type":
            return value.split(b";", 1)[0].strip().lower() in (
                b"text/html",
                b"application/xhtml+xml",
            )
    return False


class HtmlSecurityHeaders:
    def __init__(self, app: ASGIApp, *, exempt_prefixes: tuple[str, ...] = ()) -> None:
        self.app = app
        self.exempt_prefixes = exempt_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._exempt(scope["path"]):
            await self.app(scope, receive, send)
            return

        async def send_protected(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if is_html(headers):
                    message["headers"] = protected(headers)
            await send(message)

        await self.app(scope, receive, send_protected)

    def _exempt(self, path: str) -> bool:
        return any(
            path == prefix or path.startswith(prefix + "/") for prefix in self.exempt_prefixes
        )
