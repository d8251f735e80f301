"""Where a finished authorization may send the browser: only under an allow-listed prefix.

The rule is written to be decided before any parsing can surprise it: a `return_to`
is refused unless it is plain printable ASCII (international hosts in punycode, other
characters percent-encoded), so Unicode that NFKC normalisation or a browser turns
into a delimiter (a full-width colon or number sign, a one-dot leader) never reaches
the parser; an authority that does not parse (a port that is not a number or is out
of range, an unclosed IPv6 bracket) is refused, never an error; and the path, decoded
as often as it takes, holds no dot segment and no `;`, since some back ends treat
`/done/..;/x` or `/done/%252e%252e/x` as outside `/done`.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

# Printable ASCII but for the backslash (browsers read it as a slash) and `#` (a
# fragment would hide anything appended after it).
_PLAIN = re.compile(r"\A[\x21\x22\x24-\x5b\x5d-\x7e]*\Z")
_AUTHORITY = re.compile(
    r"\A(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?\Z"
)
# Decoding rounds enough for any double (or triple...) encoding a sane URL has.
_DECODE_ROUNDS = 4


def append_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query, keep_blank_values=True), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


def return_to_allowed(return_to: str, allowlist: tuple[str, ...]) -> bool:
    """Same scheme, host and port as an entry, and a path at or under the entry's path.

    Refused outright: anything but printable ASCII, backslashes, fragments, credentials
    or anything else but host and port in the authority, a port that is not 0-65535,
    and paths that hold a dot segment or a `;` in any encoding.
    """
    target = _parsed(return_to)
    if target is None:
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


def _parsed(return_to: str) -> SplitResult | None:
    """The URL's parts, if it is one the rule can judge; None to refuse it."""
    if not _PLAIN.match(return_to):
        return None
    try:
        target = urlsplit(return_to)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return None
    authority = _AUTHORITY.match(target.netloc)
    if target.scheme not in ("http", "https") or authority is None:
        return None
    port = authority.group("port")
    if port is not None and int(port) > 65535:
        return None
    if not _path_is_plain(target.path):
        return None
    return target


def _path_is_plain(path: str) -> bool:
    """No dot segment and no `;` however often the path is decoded, and nothing decoded
    that is not printable ASCII (overlong UTF-8 dots such as %C0%AE included)."""
    for _ in range(_DECODE_ROUNDS):
        segments = path.split("/")
        if ";" in path or "." in segments or ".." in segments:
            return False
        decoded = unquote(path, encoding="ascii", errors="replace")
        if decoded == path:
            return _PLAIN.match(path) is not None
        path = decoded
    return False  # still changing after several rounds: nothing a real app sends
