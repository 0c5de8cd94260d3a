"""A model card as a page shows it: its YAML front matter as key/value rows, its markdown body rendered minimally
and safely.

Card text is written by whoever pushed the model, so nothing in it may run: every character is HTML-escaped
first, and only then are a few markdown forms turned into tags this module writes itself (headings, paragraphs,
fenced code, bullet and numbered lists, pipe tables, `code`, **bold**, and links whose target is http(s) only:
a ``javascript:`` or relative link stays text). No attribute ever holds card text except an escaped http(s) URL.
"""

from __future__ import annotations

import json
import re

import yaml
from markupsafe import Markup, escape

__all__ = ["CardView", "render_card"]

MAX_META_ROWS = 60
_HEADING = re.compile(r"(#{1,6})\s+(.*?)\s*#*\s*$")
_BULLET = re.compile(r"\s*[-*+]\s+(.*)")
_NUMBERED = re.compile(r"\s*\d{1,4}[.)]\s+(.*)")
_FENCE = re.compile(r"\s*(```|~~~)")
_LINK = re.compile(r"\[([^\]\n]{1,300})\]\((https?://[^\s()<>\"]{1,2000})\)")
_CODE = re.compile(r"`([^`\n]{1,500})`")
_BOLD = re.compile(r"\*\*([^*\n]{1,500})\*\*")


class CardView:
    """``meta``: the front matter flattened to (key, text) rows; ``body``: the rendered body (safe HTML)."""

    def __init__(self, meta: list[tuple[str, str]], body: Markup, meta_error: str | None = None):
        self.meta, self.body, self.meta_error = meta, body, meta_error


def split_front_matter(text: str) -> tuple[str | None, str]:
    """(the YAML between the leading ``---`` lines or None, the rest)."""
    lines = text.lstrip("\ufeff").splitlines()
    if lines and lines[0].strip() == "---":
        for i in range(1, len(lines)):
            if lines[i].strip() == "---":
                return "\n".join(lines[1:i]), "\n".join(lines[i + 1:])
    return None, text


def _flatten(value, prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    """Nested mappings as dotted keys; lists of scalars joined; anything deeper as compact JSON."""
    if isinstance(value, dict) and value and depth < 3:
        rows: list[tuple[str, str]] = []
        for k, v in value.items():
            rows += _flatten(v, f"{prefix}.{k}" if prefix else str(k), depth + 1)
        return rows
    if isinstance(value, list) and all(not isinstance(x, (dict, list)) for x in value):
        return [(prefix, ", ".join(str(x) for x in value) or "none")]
    if isinstance(value, (dict, list)):
        return [(prefix, json.dumps(value, default=str)[:300])]
    return [(prefix, "n/a" if value is None else str(value))]


def _inline(text: str) -> Markup:
    """One line of card text: escaped, then `code`, **bold** and http(s) links."""
    out = str(escape(text))
    out = _CODE.sub(lambda m: f"<code>{m.group(1)}</code>", out)
    out = _BOLD.sub(lambda m: f"<strong>{m.group(1)}</strong>", out)
    out = _LINK.sub(lambda m: f'<a href="{m.group(2)}" rel="nofollow noopener noreferrer">{m.group(1)}</a>', out)
    return Markup(out)


def _table(rows: list[str]) -> str:
    cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
    cells = [c for c in cells if not all(re.fullmatch(r":?-{2,}:?", x) for x in c if x)]  # the |---|---| line
    if not cells:
        return ""
    head, *body = cells
    html = "<table class=\"card-table\"><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead><tbody>"
    html += "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in body)
    return html + "</tbody></table>"


def render_markdown(text: str) -> Markup:
    """A small, safe subset of markdown (see the module's docstring)."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if _FENCE.match(line):
            fence = _FENCE.match(line).group(1)
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith(fence):
                j += 1
            out.append(f"<pre>{escape(chr(10).join(lines[i + 1:j]))}</pre>")
            i = j + 1
            continue
        heading = _HEADING.fullmatch(line.strip())
        if heading:
            level = min(len(heading.group(1)) + 2, 6)  # the page's own h1/h2 stay above the card's
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
            i += 1
            continue
        if line.lstrip().startswith("|"):
            j = i
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            out.append(_table(lines[i:j]))
            i = j
            continue
        for pattern, tag in ((_BULLET, "ul"), (_NUMBERED, "ol")):
            if pattern.fullmatch(line):
                items = []
                while i < len(lines) and pattern.fullmatch(lines[i]):
                    items.append(f"<li>{_inline(pattern.fullmatch(lines[i]).group(1))}</li>")
                    i += 1
                out.append(f"<{tag}>{''.join(items)}</{tag}>")
                break
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not (_FENCE.match(lines[i]) or _HEADING.fullmatch(lines[i].strip())
                                                               or lines[i].lstrip().startswith("|") or _BULLET.fullmatch(lines[i])
                                                               or _NUMBERED.fullmatch(lines[i])):
                para.append(str(_inline(lines[i].strip())))
                i += 1
            out.append(f"<p>{' '.join(para)}</p>")
    return Markup("\n".join(out))


def render_card(text: str) -> CardView:
    """The card's front matter (as rows; unparsable YAML is reported, not shown raw) and its rendered body."""
    front, body = split_front_matter(text)
    meta: list[tuple[str, str]] = []
    error = None
    if front is not None:
        try:
            data = yaml.safe_load(front)
        except yaml.YAMLError as e:
            data, error = None, f"its front matter is not valid YAML ({str(e).splitlines()[0][:200]})"
        if isinstance(data, dict):
            meta = _flatten(data)[:MAX_META_ROWS]
        elif data is not None and error is None:
            error = "its front matter is not a mapping"
    return CardView(meta, render_markdown(body), error)
