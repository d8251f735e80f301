"""Where a finished authorization may send the browser: only under an allow-listed prefix."""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit


def append_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query, keep_blank_values=True), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


def return_to_allowed(return_to: str, allowlist: tuple[str, ...]) -> bool:
    """Same scheme, host and port as an entry, and a path at or under the entry's path.

    Refused outright: control characters and backslashes, credentials in the
    authority, fragments, and dot segments, encoded or not (a browser would resolve
    `/connected/../elsewhere` out of the allowed path).
    """
    if any(ord(c) < 0x21 or c == "\\" for c in return_to):
        return False
    target = urlsplit(return_to)
    if target.scheme not in ("http", "https") or not target.hostname or "@" in target.netloc:
        return False
    if target.fragment:
        return False
    segments = unquote(target.path).split("/")
    if "." in segments or ".." in segments or "\\" in unquote(target.path):
        return False
    for entry in allowlist:
        allowed = urlsplit(entry)
        same_origin = (
            target.scheme == allowed.scheme
            and target.hostname == allowed.hostname
            and target.port == allowed.port
        )
        prefix = allowed.path.rstrip("/")
        if same_origin and (target.path == allowed.path or target.path.startswith(prefix + "/")):
            return True
    return False
