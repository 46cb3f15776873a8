"""The report's static HTML page: sections of escaped text, tables and relative links to PNG figures.

No script, no external resource: the page opens from disk (``file://``) in any browser. Every piece of text
that comes from a store (case ids, file paths, error messages, label names) passes through :func:`esc`, and
every link through :func:`href`, so a case id such as ``<img onerror=...>`` shows as text.
"""
from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote

import pandas as pd

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 2em 3em; color: #222;
       max-width: 1200px; }
div.scroll { overflow-x: auto; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
h3 { margin-bottom: 0.3em; }
nav { position: sticky; top: 0; background: #fafafa; padding: 0.5em 0; border-bottom: 1px solid #ddd; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.err { font-family: monospace; white-space: pre-wrap; max-width: 60em; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.8em; color: #555; max-width: 60em; }
.muted { color: #666; } .warn { color: #b00; }
"""


@dataclass(frozen=True)
class Section:
    """One ``<section>`` of the page: anchor id, heading, body (HTML, already escaped)."""

    anchor: str
    title: str
    body: str


def esc(value: object) -> str:
    """``value`` as HTML text, quotes escaped too (safe in attributes)."""
    return html.escape(str(value), quote=True)


def href(rel_path: str) -> str:
    """A relative link to a file in the report folder: percent-encoded, then HTML-escaped."""
    return esc(quote(rel_path.replace("\\", "/")))


def cell(value: object) -> str:
    """A table cell's text: lists joined, floats to 4 significant digits, NaN/None empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        items = value.tolist() if hasattr(value, "tolist") else value
        if isinstance(items, list):
            return ", ".join(cell(v) for v in items)
    return str(value)


def table(df: pd.DataFrame, *, max_rows: int | None = None, wide: Iterable[str] = (),
          anchors: Mapping[str, str] | None = None) -> str:
    """``df`` as an HTML table (every cell escaped); columns in ``wide`` keep their line breaks (errors); a first
    cell whose text is a key of ``anchors`` links to ``#anchor``. Beyond ``max_rows`` rows the rest are counted in
    a note."""
    wide, anchors = set(wide), anchors or {}
    shown = df if max_rows is None else df.head(max_rows)
    head = "".join(f"<th>{esc(c)}</th>" for c in shown.columns)
    body = []
    for row in shown.itertuples(index=False):
        texts = [esc(cell(v)) for v in row]
        if texts and cell(row[0]) in anchors:
            texts[0] = f'<a href="#{esc(anchors[cell(row[0])])}">{texts[0]}</a>'
        tds = "".join(f'<td class="err">{t}</td>' if c in wide else f"<td>{t}</td>"
                      for c, t in zip(shown.columns, texts))
        body.append(f"<tr>{tds}</tr>")
    note = ""
    if max_rows is not None and len(df) > max_rows:
        note = f'<p class="muted">… and {len(df) - max_rows} more rows (see the catalog).</p>'
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'
            f"{note}")


def figure(rel_path: str, caption: str, alt: str = "") -> str:
    """A PNG in the report folder, linked to itself (full size on click), with an escaped caption."""
    link = href(rel_path)
    return (f'<figure><a href="{link}"><img src="{link}" alt="{esc(alt or caption)}"></a>'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def paragraph(text: str, cls: str = "") -> str:
    """Escaped text in a ``<p>``."""
    return f'<p class="{esc(cls)}">{esc(text)}</p>' if cls else f"<p>{esc(text)}</p>"


def page(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """The whole document: title, a navigation bar over the sections, the sections."""
    nav = "".join(f'<a href="#{esc(s.anchor)}">{esc(s.title)}</a>' for s in sections)
    body = "\n".join(f'<section id="{esc(s.anchor)}"><h2>{esc(s.title)}</h2>\n{s.body}\n</section>'
                     for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{esc(title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n<h1>{esc(title)}</h1>\n{paragraph(subtitle, 'muted')}\n"
            f"<nav>{nav}</nav>\n{body}\n</body>\n</html>\n")
