"""Redaction of secrets in DSNs, URLs and client property maps, for logs and error messages.

Redaction, all pure string functions:

* ``redact_dsn(text)`` hides the password of a PostgreSQL DSN in either of its forms
  (``postgresql://user:***@host/db`` and ``host=h user=u password=***``), the password of
  any ``scheme://user:password@host`` URL (HTTP sinks, registries), and secret query
  parameters such as ``?token=***`` or ``?password=***``.
* ``redact_properties(props)`` hides the values of secret client properties
  (librdkafka ``sasl.password``, ``ssl.key.password``, ``ssl.key.pem``, ...).
* ``is_secret_name(name)`` says whether a key names a secret, and is what both the
  configuration and ``redact_properties`` use to decide.

Resolution: a secret may be given inline or by reference, ``<key>_env: VAR`` (an
environment variable) or ``<key>_file: PATH`` (a Docker/Kubernetes secret file; trailing
newlines are stripped). ``fold_secret_keys`` turns such keys of a mapping into one
``SecretRef`` (or a ``SecretConflict`` when several forms are given) and
``SecretRef.read`` fetches the value; failures raise ``SecretUnavailable``, whose message
names the key and the variable or file, never a value.

Invariants: the redacted text keeps everything that helps an operator (scheme, user, host,
port, database, other parameters) and never contains the secret, whatever its characters
(percent-encoded, quoted with spaces, escaped quotes). When the structure is ambiguous the
functions hide more, never less. Text without secrets comes back unchanged.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

from cdc.core.errors import ConfigError

REDACTED = "***"

# Name parts (split on "." "_" "-") that mark a key as secret.
_SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "secret",
        "token",
        "credential",
        "credentials",
        "authorization",
        "cookie",
        "apikey",
        "pem",
        "sslpassword",
    }
)
_SECRET_NAMES = frozenset({"sasl.oauthbearer.config", "api-key", "api_key", "x-api-key", "key"})
_SECRET_PAIRS = frozenset({("api", "key"), ("access", "key"), ("private", "key")})

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
# One ``key = value`` pair of a libpq keyword/value connection string. A value is either
# single-quoted (backslash escapes; an unterminated quote runs to the end) or runs to the
# next whitespace (backslash escapes too).
_KEYWORD_PAIR = re.compile(
    r"(?P<key>[A-Za-z_][A-Za-z0-9_]*)(?P<eq>\s*=\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*(?:'|\\?$)|(?:\\.|[^\s\\])*\\?)",
    re.DOTALL,
)
# In free text: a URL (up to whitespace or a quote) or a keyword pair, left to right.
_TOKEN = re.compile(
    r"(?P<url>[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+)|" + _KEYWORD_PAIR.pattern, re.DOTALL
)


def is_secret_name(name: str) -> bool:
    """True if ``name`` (a property, header, parameter or field name) designates a secret."""
    lowered = name.lower()
    if lowered in _SECRET_NAMES:
        return True
    parts = [p for p in re.split(r"[._\-]", lowered) if p]
    if any(part in _SECRET_WORDS for part in parts):
        return True
    return any(pair in _SECRET_PAIRS for pair in itertools.pairwise(parts))


def redact_dsn(dsn: str) -> str:
    """``dsn`` with every password and secret parameter replaced by ``***``.

    Accepts URLs (``postgresql://``, ``http(s)://``, any ``scheme://``), libpq
    keyword/value strings, and free text (a log line, an error message) holding either.
    """
    if _SCHEME.match(dsn) and not any(c.isspace() for c in dsn):
        return _redact_url(dsn)
    return _TOKEN.sub(_redact_token, dsn)


def redact_properties(props: Mapping[str, object]) -> dict[str, object]:
    """A copy of ``props`` with secret values replaced by ``***`` and URLs/DSNs redacted."""
    out: dict[str, object] = {}
    for key, value in props.items():
        if is_secret_name(key):
            out[key] = REDACTED
        elif isinstance(value, str):
            out[key] = redact_dsn(value)
        else:
            out[key] = value
    return out


def _redact_token(match: re.Match[str]) -> str:
    if match.group("url"):
        return _redact_url(match.group("url"))
    if not is_secret_name(match.group("key")):
        return match.group(0)
    return f"{match.group('key')}{match.group('eq')}{REDACTED}"


def _redact_url(url: str) -> str:
    scheme_match = _SCHEME.match(url)
    assert scheme_match is not None
    scheme = scheme_match.group(0)
    rest = url[len(scheme) :]
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    head, tail = rest[:cut], rest[cut:]
    head = _redact_userinfo(head, http=scheme.lower().startswith("http"))
    if tail.startswith("?"):
        query, hash_mark, fragment = tail[1:].partition("#")
        tail = "?" + _redact_query(query) + hash_mark + fragment
    return scheme + head + tail


def _redact_userinfo(head: str, *, http: bool) -> str:
    """Redact ``user:password@`` at the start of ``head`` (authority and path of a URL)."""
    slash = head.find("/")
    authority = head if slash < 0 else head[:slash]
    if "@" in authority:
        at = authority.rfind("@")
    else:
        # A password holding an unencoded "/" pushes the "@" past the first slash:
        # "user:pa/ss@host/db". A real "host:port/path@x" has only digits after the colon.
        _, colon, after = authority.partition(":")
        first = head.find("@", max(slash, 0)) if colon and not after.isdigit() else -1
        if first < 0:
            return head
        end = head.find("/", first)
        at = head.rfind("@", 0, end if end >= 0 else len(head))
    userinfo = head[:at]
    user, colon, _password = userinfo.partition(":")
    if colon:
        userinfo = f"{user}:{REDACTED}"
    elif http:
        # A bare userinfo on an HTTP URL is usually a token (https://TOKEN@host).
        userinfo = REDACTED
    return userinfo + head[at:]


def _redact_query(query: str) -> str:
    parts = []
    for item in query.split("&"):
        key, eq, _value = item.partition("=")
        parts.append(f"{key}={REDACTED}" if eq and is_secret_name(unquote(key)) else item)
    return "&".join(parts)


class SecretUnavailable(ConfigError):
    """A referenced secret could not be read; ``key`` is the key as written (``dsn_env``)."""

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True, slots=True)
class SecretRef:
    """A secret given by reference: ``kind`` env or file, ``target`` and ``key`` as written."""

    kind: Literal["env", "file"]
    target: object
    key: str

    def read(self, env: Mapping[str, str], *, base_dir: Path) -> str:
        """The secret's text; a relative file path is taken from ``base_dir``."""
        what = "an environment variable name" if self.kind == "env" else "a file path"
        if not isinstance(self.target, str) or not self.target:
            raise SecretUnavailable(f"must be {what}", key=self.key)
        if self.kind == "env":
            found = env.get(self.target)
            if not found:
                state = "is not set" if found is None else "is empty"
                raise SecretUnavailable(f"environment variable {self.target} {state}", key=self.key)
            return found
        path = Path(self.target)
        path = path if path.is_absolute() else base_dir / path
        try:
            text = path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise SecretUnavailable(f"cannot read {path}: {reason}", key=self.key) from None
        if not text:
            raise SecretUnavailable(f"file {path} is empty", key=self.key)
        return text


@dataclass(frozen=True, slots=True)
class SecretConflict:
    """Several forms of one secret were given (``dsn`` and ``dsn_env``...)."""

    keys: tuple[str, ...]


def split_secret_suffix(key: str) -> tuple[str, str]:
    """``("dsn", "_env")`` for ``"dsn_env"``, ``("dsn", "")`` for ``"dsn"``."""
    for suffix in ("_env", "_file"):
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], suffix
    return key, ""


def fold_secret_keys(data: dict[str, Any], key: str) -> None:
    """Replace ``key_env`` / ``key_file`` in ``data`` by a ``SecretRef`` under ``key``."""
    given = [k for k in (key, f"{key}_env", f"{key}_file") if k in data]
    if len(given) > 1:
        for k in given:
            data.pop(k)
        data[key] = SecretConflict(tuple(given))
    elif given and given[0] != key:
        kind: Literal["env", "file"] = "env" if given[0].endswith("_env") else "file"
        data[key] = SecretRef(kind, data.pop(given[0]), given[0])
