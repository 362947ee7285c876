"""Enough YAML to read the configs where PyYAML is not installed (the GPU check's machine).

Handles what ``pipelines/configs/*.yaml`` use: block mappings and sequences by indentation,
flow lists and mappings (also spanning lines), comments, anchors, aliases and merge keys
(``&a``, ``*a``, ``<<: *a``), and YAML 1.1 scalars as PyYAML's
``safe_load`` reads them (a float needs a dot: ``5e-4`` stays a string). A unit test checks it
against PyYAML on every packaged recipe, so a recipe it would misread fails there first.
"""

import copy
import re
from typing import Any

_INT = re.compile(r"[-+]?(0|[1-9][0-9_]*)")
_FLOAT = re.compile(r"[-+]?([0-9][0-9_]*)?\.[0-9_]*([eE][-+][0-9]+)?")


def scalar(text: str) -> Any:
    text = text.strip()
    if text[:1] in "\"'" and text[-1:] == text[:1] and len(text) >= 2:
        return text[1:-1]
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if text in ("true", "True", "TRUE", "yes", "on"):
        return True
    if text in ("false", "False", "FALSE", "no", "off"):
        return False
    if _INT.fullmatch(text):
        return int(text.replace("_", ""))
    if _FLOAT.fullmatch(text) and any(c.isdigit() for c in text):
        return float(text.replace("_", ""))
    if text.lower() in (".inf", "+.inf", "-.inf", ".nan"):
        return float(text.lower().replace(".", ""))
    return text


def _split_top(text: str) -> list[str]:
    """Split a flow collection's body at commas outside nested brackets and quotes."""
    parts, depth, quote, current = [], 0, "", ""
    for c in text:
        if quote:
            quote = "" if c == quote else quote
        elif c in "\"'":
            quote = c
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += c
    if current.strip():
        parts.append(current)
    return parts


def value(text: str, anchors: dict[str, Any] | None = None) -> Any:
    text = text.strip()
    if text.startswith("*") and anchors is not None:
        if text[1:] not in anchors:
            raise ValueError(f"unknown alias {text!r}")
        return copy.deepcopy(anchors[text[1:]])
    if text.startswith("[") and text.endswith("]"):
        return [value(p) for p in _split_top(text[1:-1])]
    if text.startswith("{") and text.endswith("}"):
        out = {}
        for part in _split_top(text[1:-1]):
            key, _, v = part.partition(":")
            out[key.strip()] = value(v)
        return out
    return scalar(text)


def _strip_comment(line: str) -> str:
    quote = ""
    for i, c in enumerate(line):
        if quote:
            quote = "" if c == quote else quote
        elif c in "\"'":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(indent, content) per line, flow collections joined across lines."""
    lines: list[tuple[int, str]] = []
    pending, indent = "", 0
    for raw in text.splitlines():
        line = _strip_comment(raw)
        if not line.strip():
            continue
        if pending:
            pending += " " + line.strip()
        else:
            indent, pending = len(line) - len(line.lstrip()), line.strip()
        opened = sum(pending.count(c) for c in "[{") - sum(pending.count(c) for c in "]}")
        if opened <= 0:
            lines.append((indent, pending))
            pending = ""
    if pending:
        raise ValueError(f"unbalanced brackets in: {pending!r}")
    return lines


def _block(
    lines: list[tuple[int, str]], i: int, indent: int, anchors: dict[str, Any]
) -> tuple[Any, int]:
    if lines[i][1].startswith("- "):
        out_list = []
        while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
            item = lines[i][1][2:].strip()
            inner = indent + 2
            if ":" in item and not item.startswith(("[", "{", '"', "'")) and _is_key(item):
                # a mapping that starts on the dash line: re-read it at the item's indent
                lines[i] = (inner, item)
                value_, i = _block(lines, i, inner, anchors)
                out_list.append(value_)
            else:
                out_list.append(value(item, anchors))
                i += 1
        return out_list, i
    out: dict[str, Any] = {}
    merges: list[dict[str, Any]] = []  # `<<: *anchor` keys, applied under the explicit ones
    while i < len(lines) and lines[i][0] == indent:
        key, _, rest = lines[i][1].partition(":")
        key, rest, anchor = key.strip(), rest.strip(), None
        if rest.startswith("&"):  # an anchor names what follows (inline or the block below)
            anchor, _, rest = rest[1:].partition(" ")
            rest = rest.strip()
        i += 1
        if rest:
            out[key] = value(rest, anchors)
        elif i < len(lines) and lines[i][0] > indent:
            out[key], i = _block(lines, i, lines[i][0], anchors)
        elif i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
            out[key], i = _block(lines, i, indent, anchors)  # a sequence at the key's indent
        else:
            out[key] = None
        if anchor:
            anchors[anchor] = copy.deepcopy(out[key])
        if key == "<<":
            merged = out.pop(key)
            merges += merged if isinstance(merged, list) else [merged]
    for merged in merges:
        for k, v in merged.items():
            out.setdefault(k, v)
    return out, i


def _is_key(text: str) -> bool:
    key, sep, rest = text.partition(":")
    return bool(sep) and (not rest or rest[0] == " ") and " " not in key.strip()


def loads(text: str) -> Any:
    lines = _logical_lines(text)
    if not lines:
        return None
    data, i = _block(lines, 0, lines[0][0], {})
    if i != len(lines):
        raise ValueError(f"cannot read line {i + 1} of the document: {lines[i][1]!r}")
    return data
