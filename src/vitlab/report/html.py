"""The HTML primitives of the report: one self-contained page (inline CSS, images as data URIs, no script, no
external URL), escaped text, tables, figures and collapsible blocks."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 0 1.5em 3em; color: #1b1b1b; line-height: 1.45; }
h1 { font-size: 1.5em; margin-top: 1em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
h3 { font-size: 1.05em; margin-bottom: .3em; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; overflow-wrap: anywhere; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f7f7f7; border: 1px solid #e3e3e3; padding: .6em; overflow-x: auto; font-size: .82em; }
.diff .add { color: #11631d; background: #e7f6e9; display: block; }
.diff .del { color: #8c1c13; background: #fbe9e7; display: block; }
.diff .hunk { color: #4b4bb3; display: block; }
figure { margin: .6em 0 1.2em; } figcaption { font-size: .85em; color: #555; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; }
.muted { color: #666; font-size: .9em; } nav a { margin-right: .8em; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A cell: floats to 4 significant digits (integers in full), None as an en dash, the rest as text."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value.is_integer() and abs(value) < 1e15:
            return f"{int(value):,}"
        return f"{value:.4g}"
    return str(value)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            number = isinstance(cell, (int, float)) and not isinstance(cell, bool)
            cells.append(f'<td class="num">{esc(fmt(cell))}</td>' if number else f"<td>{esc(fmt(cell))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def image(png: bytes, alt: str, caption: str | None = None) -> str:
    """A PNG inline as a data URI (the page needs no file beside it)."""
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    tail = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{uri}" alt="{esc(alt)}">{tail}</figure>'


def pre(text: str, css_class: str = "") -> str:
    return f'<pre class="{css_class}">{esc(text)}</pre>' if css_class else f"<pre>{esc(text)}</pre>"


def diff_block(lines: Sequence[str]) -> str:
    """A unified diff with added/removed lines coloured."""
    out = []
    for line in lines:
        kind = "add" if line.startswith("+") else "del" if line.startswith("-") else "hunk" if line[:2] == "@@" else ""
        text = esc(line.rstrip("\n"))
        out.append(f'<span class="{kind}">{text}</span>' if kind else text + "\n")
    return f'<pre class="diff">{"".join(out)}</pre>'


def details(summary: str, body: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{esc(summary)}</summary>{body}</details>"


def page(title: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document: `sections` is [(anchor id, heading, body html)], with a table of contents on top."""
    nav = " ".join(f'<a href="#{esc(anchor)}">{esc(heading)}</a>' for anchor, heading, _ in sections)
    parts = [f'<section id="{esc(a)}"><h2>{esc(h)}</h2>{body}</section>' for a, h, body in sections]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'  # no favicon request: a file:// page has none to fetch
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{esc(title)}</h1><nav>{nav}</nav>{''.join(parts)}</body></html>\n"
    )
