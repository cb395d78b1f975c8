"""A report as one small document tree, rendered to HTML and to Markdown.

The report builders (:mod:`digitlab.report.document`) describe a report once with the nodes
below; :func:`to_html` writes one self-contained page (figures embedded as base64 PNG, CSS
inline, no network) and :func:`to_markdown` its twin (figures linked by relative path).

Inline content (a :data:`Span`) is plain text or :class:`Code`, :class:`Strong`, :class:`Link`
or :class:`Mark`; blocks are :class:`Heading`, :class:`Paragraph`, :class:`Banner`,
:class:`Meta`, :class:`Table`, :class:`Figure` and :class:`Section` (which holds blocks).
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from digitlab.errors import ReportError
from digitlab.report.figures import DPI

#: Display size of figures: CSS pixels per figure inch (a page has 96; text 9 pt reads well).
CSS_PX_PER_INCH = 110

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
 margin:0 auto;max-width:1280px;padding:0 24px 48px;color:#1f2328;background:#fff}
h1{font-size:26px;margin:24px 0 4px}h2{font-size:21px;margin:36px 0 4px;
 border-bottom:1px solid #d0d7de;padding-bottom:4px}h3{font-size:16px;margin:18px 0 6px}
.meta,.where{color:#59636e;margin:2px 0}code{font-size:13px}
table{border-collapse:collapse;margin:8px 0 12px;font-size:13.5px}
th,td{border:1px solid #d0d7de;padding:3px 9px;text-align:left;vertical-align:top}
th{background:#f6f8fa;white-space:nowrap}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.chosen td{background:#fff8c5}tr.alternative td{color:#59636e}
figure{margin:14px 0 22px}figure img{max-width:100%;height:auto;border:1px solid #eaeef2}
figcaption{color:#3d444d;font-size:13.5px;margin-top:4px;max-width:1000px}
.banner{background:#fff1c2;border:1px solid #d4a72c;padding:8px 12px;border-radius:6px;
 margin:10px 0}
.missing{background:#ffebe9;border:1px solid #cf222e;padding:8px 12px;border-radius:6px}
.ok{color:#1a7f37;font-weight:600}.near{color:#9a6700;font-weight:600}
.bad{color:#cf222e;font-weight:600}.note{color:#59636e;font-size:13px}
p.text{max-width:1000px;margin:4px 0 8px}
"""

#: Marks every image with data-ok and appends #render-check (read by scripts/check_report.py).
CHECK_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, loaded = 0;
  for (var i = 0; i < imgs.length; i++) {
    var im = imgs[i], r = im.getBoundingClientRect();
    var ok = im.complete && im.naturalWidth > 0 && r.width > 0 && r.height > 0;
    im.setAttribute("data-ok", ok ? "1" : "0");
    if (ok) loaded++;
  }
  var s = document.createElement("div");
  s.id = "render-check"; s.hidden = true;
  s.setAttribute("data-images", imgs.length);
  s.setAttribute("data-loaded", loaded);
  s.setAttribute("data-height", document.documentElement.scrollHeight);
  document.body.appendChild(s);
});
"""


# ---------------------------------------------------------------------------------- nodes
@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Strong:
    text: str


@dataclass(frozen=True)
class Link:
    """A link; ``internal`` ones point inside the HTML page and are plain text in Markdown."""

    text: str
    href: str
    internal: bool = False


@dataclass(frozen=True)
class Mark:
    """A status mark such as "✓ meets": ``css`` class and hover ``title`` in HTML."""

    symbol: str
    status: str
    css: str
    title: str


Span = str | Code | Strong | Link | Mark


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Paragraph:
    """Lines of inline spans, kept apart by line breaks; ``style`` is a CSS class
    (``"note"`` is set in italics in Markdown)."""

    lines: list[list[Span]]
    style: str = ""

    @classmethod
    def of(cls, *spans: Span, style: str = "") -> Paragraph:
        """A one-line paragraph."""
        return cls([list(spans)], style)


@dataclass
class Banner:
    """A highlighted notice: ``title`` in bold, then ``text``; ``kind`` tags it in HTML."""

    title: str
    text: str
    kind: str


@dataclass
class Meta:
    """``name: value`` lines under a title (a bullet list in Markdown)."""

    items: list[tuple[str, str]]


@dataclass
class Table:
    """A table; ``row_classes`` (CSS) highlight rows in HTML."""

    header: list[str]
    rows: list[list[Span]]
    row_classes: list[str] | None = None


@dataclass
class Figure:
    """A saved figure (``png``), or why it could not be drawn (``png`` None, ``error``)."""

    number: str
    kind: str
    caption: str
    png: Path | None
    error: str | None
    alt: str
    figure_id: str


@dataclass
class Section:
    """Blocks under one HTML element (``tag`` with ``css`` class and ``anchor`` id)."""

    blocks: list[Block]
    css: str = ""
    anchor: str = ""
    tag: str = "section"


Block = Heading | Paragraph | Banner | Meta | Table | Figure | Section


@dataclass
class Document:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def figures(self) -> Iterator[Figure]:
        """Every figure node, in document order."""

        def walk(blocks: list[Block]) -> Iterator[Figure]:
            for b in blocks:
                if isinstance(b, Figure):
                    yield b
                elif isinstance(b, Section):
                    yield from walk(b.blocks)

        return walk(self.blocks)


# ---------------------------------------------------------------------------------- HTML
def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


NUMBER = re.compile(r"[+-]?\d[\d.]*(e[+-]?\d+)?(%| pp| s)?")


def png_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` in pixels from a PNG's header."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 24:
        raise ReportError("not a PNG file")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _span_html(span: Span) -> str:
    if isinstance(span, str):
        return _e(span)
    if isinstance(span, Code):
        return f"<code>{_e(span.text)}</code>"
    if isinstance(span, Strong):
        return f"<strong>{_e(span.text)}</strong>"
    if isinstance(span, Link):
        return f'<a href="{_e(span.href)}">{_e(span.text)}</a>'
    return (
        f'<span class="{span.css}" title="{_e(span.title)}">{span.symbol} {_e(span.status)}</span>'
    )


def _table_html(t: Table) -> str:
    """Numbers (97.20%, +1.01 pp, 2.5e-06) in plain cells are right-aligned."""
    out = ["<table><thead><tr>", *(f"<th>{_e(h)}</th>" for h in t.header), "</tr></thead><tbody>"]
    for i, row in enumerate(t.rows):
        cls = t.row_classes[i] if t.row_classes else ""
        out.append(f'<tr class="{cls}">' if cls else "<tr>")
        for cell in row:
            num = ' class="num"' if isinstance(cell, str) and NUMBER.fullmatch(cell) else ""
            out.append(f"<td{num}>{_span_html(cell)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _figure_html(f: Figure) -> str:
    if f.png is None:
        return (
            f'<p class="missing" data-missing-figure="{_e(f.figure_id)}">'
            f"Figure {f.number} ({_e(f.kind)}) could not be drawn: {_e(f.error)}</p>"
        )
    raw = f.png.read_bytes()
    width = round(png_size(raw)[0] * CSS_PX_PER_INCH / DPI)
    data = base64.b64encode(raw).decode("ascii")
    img = (
        f'<img src="data:image/png;base64,{data}" width="{width}" alt="{_e(f.alt)}" '
        f'data-figure="{_e(f.figure_id)}">'
    )
    return (
        f"<figure>{img}<figcaption><strong>Figure {f.number}.</strong> {_e(f.caption)}"
        "</figcaption></figure>"
    )


def _block_html(b: Block) -> str:
    if isinstance(b, Heading):
        return f"<h{b.level}>{_e(b.text)}</h{b.level}>"
    if isinstance(b, Paragraph):
        cls = f' class="{b.style}"' if b.style else ""
        lines = ("".join(_span_html(s) for s in line) for line in b.lines)
        return f"<p{cls}>{'<br>'.join(lines)}</p>"
    if isinstance(b, Banner):
        return (
            f'<div class="banner" data-{b.kind}="1"><strong>{_e(b.title)}</strong> '
            f"{_e(b.text)}</div>"
        )
    if isinstance(b, Meta):
        return "\n".join(f'<p class="meta">{_e(k)}: {_e(v)}</p>' for k, v in b.items)
    if isinstance(b, Table):
        return _table_html(b)
    if isinstance(b, Figure):
        return _figure_html(b)
    attrs = (f' class="{b.css}"' if b.css else "") + (f' id="{_e(b.anchor)}"' if b.anchor else "")
    return "\n".join([f"<{b.tag}{attrs}>", *map(_block_html, b.blocks), f"</{b.tag}>"])


def to_html(doc: Document) -> str:
    """One self-contained HTML page; ``<body data-figures>`` counts the embedded figures."""
    n_figs = sum(1 for f in doc.figures() if f.png is not None)
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(doc.title)}</title><style>{CSS}</style></head>",
        f'<body data-figures="{n_figs}">',
        *map(_block_html, doc.blocks),
        f"<script>{CHECK_SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------- Markdown
def _md_text(text: object) -> str:
    """Text with HTML escaped (Markdown renderers pass raw HTML through)."""
    return html.escape(str(text), quote=False)


def _md_cell(text: object) -> str:
    """Text safe inside a Markdown table cell."""
    return _md_text(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _span_md(span: Span, cell: bool = False) -> str:
    esc = _md_cell if cell else _md_text
    if isinstance(span, str):
        return esc(span)
    if isinstance(span, Code):
        return f"`{span.text}`"
    if isinstance(span, Strong):
        return f"**{esc(span.text)}**"
    if isinstance(span, Link):
        return esc(span.text) if span.internal else f"[{esc(span.text)}]({span.href})"
    return esc(f"{span.symbol} {span.status}")


def _block_md(b: Block, root: Path) -> list[str]:
    """Lines of one block, each block followed by a blank line."""
    if isinstance(b, Heading):
        return ["#" * b.level + " " + _md_text(b.text), ""]
    if isinstance(b, Paragraph):
        text = "  \n".join("".join(_span_md(s) for s in line) for line in b.lines)
        return [f"*{text}*" if b.style == "note" else text, ""]
    if isinstance(b, Banner):
        return [f"> **{_md_text(b.title)}** {_md_text(b.text)}", ""]
    if isinstance(b, Meta):
        return [f"- {k}: {_md_text(v)}" for k, v in b.items] + [""]
    if isinstance(b, Table):
        out = [
            "| " + " | ".join(_md_cell(h) for h in b.header) + " |",
            "|" + "|".join("---" for _ in b.header) + "|",
        ]
        out += ["| " + " | ".join(_span_md(c, cell=True) for c in row) + " |" for row in b.rows]
        return out + [""]
    if isinstance(b, Figure):
        if b.png is None:
            return [f"**Figure {b.number} ({b.kind}) could not be drawn:** {_md_cell(b.error)}", ""]
        rel = b.png.relative_to(root).as_posix()
        alt = _md_text(b.alt).replace("[", "(").replace("]", ")")
        return [f"![{alt}]({rel})", "", f"*Figure {b.number}.* {_md_text(b.caption)}", ""]
    return [line for child in b.blocks for line in _block_md(child, root)]


def to_markdown(doc: Document, root: Path) -> str:
    """The Markdown twin of :func:`to_html`; figures are linked relative to ``root``."""
    lines: list[str] = []
    for b in doc.blocks:
        lines += _block_md(b, root)
    return "\n".join(lines).rstrip() + "\n"
