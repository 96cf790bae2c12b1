"""URLs in settings: credentials masked for printing, user parts checked, the scheme, and
a sentinel:// URL completed for cachework's own Redis client.

Pure string functions (no environment, no network), so a log line or an error message
anywhere can mask a URL without reading the settings.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit

from cachework.errors import ConfigError

# A Redis server, or the master of a Sentinel group (cachework/redis_client.py).
REDIS_SCHEMES = ("redis", "rediss", "sentinel")

_SECRET_PARAMS = re.compile(
    r"(?i)([?&;](?:password|passwd|pass|pwd|secret|token|sslpassword|sslkey|api_key"
    r"|sentinel_password"
    r"|accountkey|sharedaccesskey|sig)=)[^&;#]*"
)
QUOTING_HINT = (
    "percent-encode the user and password (Python: urllib.parse.quote(password, safe='')), "
    "e.g. '#' -> %23, '?' -> %3F, '/' -> %2F, '@' -> %40, ';' -> %3B"
)
# Where a URL starts in a text: a failover list (`amqp://h1//;amqp://h2//`) or a message.
_URL_START = re.compile(r"(?<![\w+.-])(?=[A-Za-z][\w+.-]*://)")
_HOST_PORT = re.compile(r"(?:[\w.~%-]*|\[[0-9A-Fa-f:.]+\])(?::\d*)?")
# An '@' in a query or fragment that is not in a key=value pair (`?x@h`, unlike `?user=a@b`).
_BARE_AT = re.compile(r"[?#&;][^?#&;=@]*@")


def _cut(rest: str, start: int = 0) -> int:
    """Index of the first '/', '?' or '#' in `rest` from `start` (where a parser ends the
    authority, or the path); len(rest) if none."""
    return min((i for i in (rest.find(c, start) for c in "/?#") if i >= 0), default=len(rest))


def _unparseable_userinfo(url: str) -> bool:
    """True when a password holds '/', '?' or '#' unquoted: parsers end the authority inside
    it and read the rest ('...@host') as path or query. An '@' past that end betrays it, in
    the path always, in a query or fragment unless a plain host[:port] precedes and the '@'
    sits in a key=value pair (`?user=a@b`). No authority (`sqlite:////a@b.db`): a path."""
    _scheme, sep, rest = url.partition("://")
    cut = _cut(rest)
    head, tail = rest[:cut], rest[cut:]
    if not sep or not head or "@" not in tail:
        return False
    query = _cut(tail, 1) if tail[0] == "/" else 0
    if "@" in tail[:query]:
        return True
    host = head.rpartition("@")[2]
    return not _HOST_PORT.fullmatch(host) or bool(_BARE_AT.search(tail[query:]))


def _mask_one(url: str) -> str:
    """`url` (one URL, maybe followed by text) with the password of its user part hidden."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    if _unparseable_userinfo(url):  # the password may run up to the last '@': hide that all
        userinfo, _, after = rest.rpartition("@")
        user, colon, _pw = userinfo.partition(":")
        return f"{scheme}://{user + colon if colon else ''}***@{after}"
    cut = _cut(rest)
    userinfo, _, host = rest[:cut].rpartition("@")
    user, colon, _pw = userinfo.partition(":")
    return f"{scheme}://{user}:***@{host}{rest[cut:]}" if colon else url


def mask_url(url: str) -> str:
    """Return `url` with every credential replaced by `***`, safe to print or log: the
    password of the user part (even one with unquoted '/', '?', '#' or '@') of each URL in
    it (a failover list, an error message), and query parameters such as `?password=`."""
    if not isinstance(url, str):
        return "***"
    masked = "".join(_mask_one(part) for part in _URL_START.split(url))
    return _SECRET_PARAMS.sub(r"\1***", masked)


def _unparseable(part: str) -> bool:
    """True when one URL of a `;`-separated list has a user part no parser reads as written
    (or is a piece of a password split at a ';' in it: `user:pa;ss@host`)."""
    if "://" not in part:
        return "@" in part
    if _unparseable_userinfo(part):
        return True
    try:
        urlsplit(part).port  # noqa: B018 - raises on a password read as a port
    except ValueError:
        return True
    return False


def check_url(name: str, raw: str) -> None:
    """ConfigError (URLs masked, with how to quote) for a URL, or any URL of a failover list
    (split at each ';' as kombu does), whose user part no parser reads as written."""
    if any(_unparseable(part) for part in raw.split(";")):
        raise ConfigError(
            f"{name}={mask_url(raw)!r} cannot be parsed: its user or password holds a "
            f"character with a meaning in URLs; {QUOTING_HINT}"
        )


def scheme(url: str) -> str:
    """The lower-case scheme of `url` ("" when it has none)."""
    return url.split("://", 1)[0].lower() if "://" in url else ""


def sentinel_client_url(
    url: str, master_name: str | None, username: str | None, password: str | None
) -> str:
    """`url` as cachework/redis_client.py reads it: a sentinel:// URL gets the master name and
    the sentinels' credentials in its query unless it names them itself; others as is."""
    if scheme(url) != "sentinel":
        return url
    extra = {
        "master_name": master_name,
        "sentinel_username": username,
        "sentinel_password": password,
    }
    given = {k for part in url.split(";") for k, _v in parse_qsl(urlsplit(part).query)}
    pairs = [(k, v) for k, v in extra.items() if v and k not in given]
    if not pairs:
        return url
    return f"{url}{'&' if '?' in url.rsplit(';', 1)[-1] else '?'}{urlencode(pairs)}"
