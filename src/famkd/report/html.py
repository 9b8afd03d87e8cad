"""Static HTML pieces for `famkd report`: escaped text, tables, figures and the page around them.

The page is self-contained: inline CSS, system fonts, no scripts, images referenced by relative file
names, so it opens offline from any folder it is copied to together with its files.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape

STYLE = """
body { font-family: sans-serif; max-width: 1150px; margin: 1em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-top: 2px solid #888; padding-top: 0.6em; margin-top: 2em; }
h3 { font-size: 1.05em; margin-top: 1.4em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #eee; } td.number { text-align: right; font-variant-numeric: tabular-nums; }
caption { caption-side: bottom; text-align: left; font-size: 0.85em; color: #555; padding-top: 3px; }
figure { margin: 0.5em 0 1em 0; } img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption, p.source { font-size: 0.85em; color: #555; }
ul.notes { background: #fff6dd; border-left: 4px solid #e0a800; padding: 0.5em 0.5em 0.5em 2em; }
dl.options { column-count: 3; font-size: 0.8em; font-family: monospace; }
dl.options dt { font-weight: bold; } dl.options dd { margin: 0 0 0.3em 1em; break-before: avoid; }
"""


def text(value: object) -> str:
    """`value` as escaped HTML text."""
    return escape(str(value))


def table(header: Sequence[str], rows: Iterable[Sequence[str]], caption: str = "", numbers_from: int = 99) -> str:
    """A table of escaped cells; columns from index `numbers_from` on are right-aligned numbers."""
    head = "".join(f"<th>{text(cell)}</th>" for cell in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="number">{text(cell)}</td>' if index >= numbers_from else f"<td>{text(cell)}</td>"
            for index, cell in enumerate(row)
        )
        + "</tr>\n"
        for row in rows
    )
    caption_html = f"<caption>{text(caption)}</caption>" if caption else ""
    return f"<table>{caption_html}<thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>\n"


def key_values(pairs: Sequence[tuple[str, str]]) -> str:
    """A two-column table: names in header cells, values beside them."""
    rows = "".join(f"<tr><th>{text(key)}</th><td>{text(value)}</td></tr>\n" for key, value in pairs)
    return f"<table><tbody>\n{rows}</tbody></table>\n"


def figure(source: str, alt: str, caption: str) -> str:
    """An image file (relative name) with a short `alt` text and its caption."""
    return f'<figure><img src="{text(source)}" alt="{text(alt)}"><figcaption>{text(caption)}</figcaption></figure>\n'


def notes(items: Sequence[str]) -> str:
    """What is not available, and why."""
    if not items:
        return ""
    return '<ul class="notes">' + "".join(f"<li>{text(item)}</li>" for item in items) + "</ul>\n"


def options_list(options: dict[str, str]) -> str:
    """Every setting as key / value, in columns."""
    return (
        '<dl class="options">'
        + "".join(f"<dt>{text(key)}</dt><dd>{text(value)}</dd>" for key, value in options.items())
        + "</dl>\n"
    )


def links(files: Sequence[str]) -> str:
    """A line of links to files beside the page."""
    return '<p class="source">data: ' + ", ".join(f'<a href="{text(f)}">{text(f)}</a>' for f in files) + "</p>\n"


def heading(level: int, title: str, anchor: str = "") -> str:
    """<h`level`> with an optional id to link to."""
    anchor_html = f' id="{text(anchor)}"' if anchor else ""
    return f"<h{level}{anchor_html}>{text(title)}</h{level}>\n"


def paragraph(content: str, css_class: str = "") -> str:
    """A paragraph of escaped text."""
    class_html = f' class="{css_class}"' if css_class else ""
    return f"<p{class_html}>{text(content)}</p>\n"


def page(title: str, body: Iterable[str]) -> str:
    """The whole document."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{text(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "".join(body)
        + "</body>\n</html>\n"
    )
