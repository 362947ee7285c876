"""Credentials kept out of everything a run writes or prints: MLflow params, tags and artifacts
(``config.yaml``, ``summary.json``), checkpoint state, and a Ray job's command line.

What counts as a credential:

- the value of a key that names one: a dotted key any of whose parts has the word ``secret``,
  ``token``, ``password``, ``credential``, ``access_key``, ``api_key``… (``tracking.api_token``,
  ``AWS_SECRET_ACCESS_KEY``; not ``method_args.tokenizer.kind``: ``tokenizer`` is another word);
- in any text, a URL's userinfo: ``scheme://user:PASSWORD@host`` keeps the user,
  ``scheme://TOKEN@host`` loses it all (one word before ``@`` may be a token); a password may
  itself hold ``@`` (the host starts after the last one);
- in any text, query parameters that carry one: ``?token=``, ``X-Amz-Signature=``,
  ``X-Amz-Credential=``, ``sig=`` (Azure SAS), ``key=``, ``password=``…

Redacted parts read ``***``. What is redacted is gone: a resumed run takes its tracking URI from
the command line, never from the redacted ``config.yaml``.
"""

import itertools
import re
from typing import Any

REDACTED = "***"

# a key part's words (split at _ - . and camelCase) that mark its value as a credential
_SECRET_WORDS = {
    "secret",
    "secrets",
    "token",
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "credential",
    "credentials",
    "authorization",
    "apikey",
}
_SECRET_PAIRS = {("access", "key"), ("api", "key"), ("private", "key"), ("session", "key")}
# query parameter words that mark a credential besides those (signed URLs: S3, Azure SAS)
_QUERY_WORDS = {"sig", "signature", "key", "auth"}

_URL = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<rest>[^\s\"'<>]*)")
_QUERY_PARAM = re.compile(r"(?P<sep>[?&;])(?P<name>[^=&#\s]+)=(?P<value>[^&#\s\"'<>]*)")
_HOST_PORT = re.compile(r"[^:@]*(:\d*)?")


def _words(key: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key)  # camelCase -> camel_Case
    return [w for w in re.split(r"[^a-zA-Z0-9]+", spaced.lower()) if w]


def _names_secret(words: list[str]) -> bool:
    return any(w in _SECRET_WORDS for w in words) or any(
        pair in _SECRET_PAIRS for pair in itertools.pairwise(words)
    )


def is_secret_key(key: str) -> bool:
    """Whether a (dotted) key names a credential: ``db.password``, ``hf_TOKEN``,
    ``AWS_ACCESS_KEY_ID``; not ``method_args.tokenizer.seed`` or ``encoder_mask_tokens``."""
    return any(_names_secret(_words(part)) for part in key.split("."))


def _redact_query(match: re.Match) -> str:
    words = _words(match["name"])
    if match["value"] and (_names_secret(words) or any(w in _QUERY_WORDS for w in words)):
        return f"{match['sep']}{match['name']}={REDACTED}"
    return match[0]


def _redact_url(match: re.Match) -> str:
    scheme, rest = match["scheme"], match["rest"]
    end = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    head, tail = rest[:end], rest[end:]
    slash = head.find("/")
    authority = head if slash < 0 else head[:slash]
    if "@" in authority:
        at = authority.rindex("@")  # a password may hold '@': the host follows the last one
    elif "@" in head and ":" in authority and not _HOST_PORT.fullmatch(authority):
        at = head.index("@")  # user:pass/with/slashes@host, unencoded
    else:
        at = -1
    if at >= 0:
        userinfo = head[:at]
        user = userinfo.split(":", 1)[0] + ":" if ":" in userinfo else ""
        head = f"{user}{REDACTED}{head[at:]}"
    return scheme + head + tail


def redact_text(text: str) -> str:
    """``text`` with every URL's userinfo and every credential query parameter redacted."""
    return _QUERY_PARAM.sub(_redact_query, _URL.sub(_redact_url, text))


def has_secret(text: str) -> bool:
    """Whether :func:`redact_text` would change ``text``."""
    return redact_text(text) != text


def _redact_value(key: str, value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _redact_value(f"{key}.{k}" if key else str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_value(key, v) for v in value)
    if is_secret_key(key) and value not in (None, "") and not isinstance(value, bool):
        return REDACTED
    return redact_text(value) if isinstance(value, str) else value


def redact_tree(data: Any) -> Any:
    """Nested dicts and lists (a config, a summary) with credentials redacted: secret-named keys'
    values replaced, credentials inside strings removed; everything else as it was."""
    return _redact_value("", data)


def redact(values: dict[str, Any]) -> dict[str, str]:
    """Flat ``key -> value`` pairs (MLflow params, tags) as redacted strings."""
    return {k: str(_redact_value(k, v)) for k, v in values.items()}


def redacted_keys(data: Any, prefix: str = "") -> list[str]:
    """The dotted keys of a nested dict whose value holds :data:`REDACTED`: what a redacted
    artifact cannot give back."""
    if isinstance(data, dict):
        return [k for key, v in data.items() for k in redacted_keys(v, f"{prefix}{key}.")]
    if isinstance(data, (list, tuple)):
        return [k for v in data for k in redacted_keys(v, prefix)]
    return [prefix.rstrip(".")] if isinstance(data, str) and REDACTED in data else []
