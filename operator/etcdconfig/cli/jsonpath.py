"""A small subset of kubectl's JSONPath for ``-o jsonpath=TEMPLATE``.

Supported (enough for scripts; anything else is a usage error naming what is not):

- text with ``{EXPR}`` expressions, e.g. ``{.config} has {.versions[0].version}``;
  a template without braces is one expression (``-o jsonpath=.versions[0].version``);
- ``EXPR`` is a path from the root: ``.field``, ``['field']`` (keys with dots),
  ``[N]`` (negative counts from the end), ``[*]`` and ``.*`` (every element);
  a leading ``$`` is allowed;
- ``\\n`` and ``\\t`` in the template are a newline and a tab.

Like kubectl, several results are joined by one space, strings print bare,
other values as JSON, and a path that does not exist is an error.
Not supported: ``range``/``end``, filters ``[?()]``, slices ``[a:b]``, ``..``.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["JsonPathError", "render", "validate"]


class JsonPathError(ValueError):
    """The template is outside the subset, or a path does not exist in the document."""


_STEP = re.compile(
    r"""\.(?P<field>[A-Za-z0-9_\-]+)   # .field
      | \.\*                            # .*  (every element)
      | \[(?P<index>-?\d+)\]            # [N]
      | \[\*\]                          # [*]
      | \[(?P<q>['"])(?P<key>.*?)(?P=q)\]  # ['key']
    """,
    re.VERBOSE,
)

Step = tuple[str, Any]  # ("key", name) | ("index", n) | ("all", None)


def _parse_expr(expr: str) -> list[Step]:
    text = expr.strip()
    if text.startswith("$"):
        text = text[1:]
    if text in ("", "."):
        return []
    if not text.startswith((".", "[")):
        text = "." + text
    steps: list[Step] = []
    pos = 0
    while pos < len(text):
        m = _STEP.match(text, pos)
        if m is None:
            raise JsonPathError(
                f"unsupported JSONPath {expr!r} at {text[pos:]!r} (supported: .field, "
                "['key'], [N], [*], .*)"
            )
        if m.group("field") is not None:
            steps.append(("key", m.group("field")))
        elif m.group("index") is not None:
            steps.append(("index", int(m.group("index"))))
        elif m.group("key") is not None:
            steps.append(("key", m.group("key")))
        else:
            steps.append(("all", None))
        pos = m.end()
    return steps


def _split(template: str) -> list[tuple[bool, str]]:
    """(is_expression, text) parts of a template."""
    if "{" not in template and "}" not in template:
        return [(True, template)]
    parts: list[tuple[bool, str]] = []
    pos = 0
    while pos < len(template):
        start = template.find("{", pos)
        if start < 0:
            parts.append((False, template[pos:]))
            break
        if "}" in template[pos:start]:
            raise JsonPathError(f"unmatched '}}' in JSONPath template {template!r}")
        if start > pos:
            parts.append((False, template[pos:start]))
        end = template.find("}", start)
        if end < 0:
            raise JsonPathError(f"unclosed '{{' in JSONPath template {template!r}")
        inner = template[start + 1 : end].strip()
        if inner.split(" ", 1)[0] in ("range", "end") or inner.startswith("?"):
            raise JsonPathError(f"unsupported JSONPath {{{inner}}} (no range/end or filters)")
        parts.append((True, inner))
        pos = end + 1
    return parts


def validate(template: str) -> None:
    """Raise ``JsonPathError`` unless the template is within the subset."""
    for is_expr, text in _split(template):
        if is_expr:
            _parse_expr(text)


def _walk(values: list[Any], step: Step, expr: str) -> list[Any]:
    kind, arg = step
    out: list[Any] = []
    for v in values:
        if kind == "key":
            if not isinstance(v, dict) or arg not in v:
                raise JsonPathError(f"{expr}: {arg!r} is not found")
            out.append(v[arg])
        elif kind == "index":
            if not isinstance(v, list) or not -len(v) <= arg < len(v):
                raise JsonPathError(f"{expr}: index {arg} is out of range")
            out.append(v[arg])
        elif isinstance(v, list):
            out.extend(v)
        elif isinstance(v, dict):
            out.extend(v.values())
        else:
            raise JsonPathError(f"{expr}: [*] on a {type(v).__name__}")
    return out


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=False)


def render(template: str, doc: Any) -> str:
    """The template filled from ``doc`` (the object ``-o json`` would print)."""
    out: list[str] = []
    for is_expr, text in _split(template):
        if not is_expr:
            out.append(text.replace("\\n", "\n").replace("\\t", "\t"))
            continue
        values = [doc]
        for step in _parse_expr(text):
            values = _walk(values, step, text)
        out.append(" ".join(_text(v) for v in values))
    return "".join(out)
