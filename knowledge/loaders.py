"""Turn an uploaded file or a fetched page into a `LoadedDocument` of located blocks.

`load_bytes` is synchronous and CPU-bound; async callers run it in `asyncio.to_thread`. The kind
is taken from the content (see `knowledge.sniff`); every failure ends in an `IngestError` whose
message says what was wrong and what is accepted, never in a traceback shown to the user.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
import re
from typing import Callable, Iterable, Sequence

from bot.errors import IngestError
from knowledge.sniff import (
    check_zip,
    csv_dialect,
    damaged_error,
    decode_text,
    detect_kind,
    empty_error,
    kind_label,
    mb_text,
)
from knowledge.types import Block, BlockKind, LoadedDocument

log = logging.getLogger(__name__)

_GENERIC_TITLES = {"", "untitled", "document", "presentation", "powerpoint presentation", "slide 1", "sheet1"}

_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")
Loaded = tuple[str, list[Block], "int | None"]  # title, blocks, pages


def load_bytes(
    data: bytes,
    filename: str = "",
    *,
    mime: str = "",
    max_bytes: int = 50 * 1024 * 1024,
    max_unpacked: int = 200 * 1024 * 1024,
    url: str = "",
) -> LoadedDocument:
    """Load one document from its bytes; raise IngestError with a user-facing sentence on bad input."""
    name = _display_name(filename, url)
    if len(data) > max_bytes:
        raise IngestError(
            f"{name} is {mb_text(len(data))} MB, which is over the {mb_text(max_bytes)} MB limit "
            f"for documents; "
            f"please send a smaller file or split it into parts."
        )
    kind = detect_kind(data, filename, mime)
    if kind in ("docx", "xlsx", "pptx"):
        check_zip(data, name, kind, max_unpacked)
    try:
        title, blocks, pages = _LOADERS[kind](data, name, mime)
    except (IngestError, ImportError):
        raise  # an ImportError is a broken installation, not a damaged file
    except Exception as exc:  # noqa: BLE001 - the parser boundary: no traceback reaches the user
        log.warning("could not parse %s as %s", name, kind, exc_info=True)
        raise damaged_error(name, kind_label(kind)) from exc
    kept = tuple(b for b in blocks if b.text.strip())
    if not kept:
        raise empty_error(name)
    log.debug("loaded %s as %s: %d blocks", name, kind, len(kept))
    return LoadedDocument(
        title=clean_text(title) or name, kind=kind, blocks=kept, origin=filename or url, pages=pages, url=url
    )


def _display_name(filename: str, url: str) -> str:
    base = filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return base or url or "the file"


def clean_text(text: str) -> str:
    """Collapse whitespace (and drop zero-width characters) to single spaces."""
    return re.sub(r"\s+", " ", _ZERO_WIDTH.sub("", text or "")).strip()


def _meta_title(title: str | None) -> str:
    title = clean_text(title or "")
    return "" if title.lower() in _GENERIC_TITLES else title


def _record(header: Sequence[str], values: Sequence[str]) -> str:
    """A table row as 'Header: value; Header: value' (empty values skipped)."""
    parts = []
    for i, value in enumerate(values):
        if not value:
            continue
        label = header[i] if i < len(header) and header[i] else f"Column {i + 1}"
        parts.append(f"{label}: {value}")
    return "; ".join(parts)


def table_blocks(rows: Iterable[list[str]], location: str, path: tuple[str, ...] = ()) -> list[Block]:
    """Rows of a table (first non-empty row is the header) as 'row' blocks."""
    rows = [r for r in rows if any(r)]
    if len(rows) == 1:
        return [Block(" | ".join(c for c in rows[0] if c), "row", location, path)]
    return [Block(_record(rows[0], r), "row", location, path) for r in rows[1:]]


class Outline:
    """The heading path at the current point of a document (Word, Markdown, HTML)."""

    def __init__(self) -> None:
        self._stack: list[tuple[int, str]] = []

    @property
    def path(self) -> tuple[str, ...]:
        """The heading texts from the outermost to the current one."""
        return tuple(t for _, t in self._stack)

    @property
    def location(self) -> str:
        """The heading path as a citation location: 'Setup > VPN'."""
        return " > ".join(self.path)

    def enter(self, level: int, text: str) -> Block:
        """Enter a heading of `level` (leaving those at that level or deeper); return its block."""
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        self._stack.append((level, text))
        return self.block(text, "heading")

    def block(self, text: str, kind: BlockKind = "paragraph") -> Block:
        """A block under the current heading path."""
        return Block(text, kind, self.location, self.path)


def _join_lines(lines: Iterable[str]) -> str:
    """Join wrapped lines: with a space, or with nothing between two CJK characters."""
    out = ""
    for line in lines:
        line = line.strip()
        if not line:
            continue
        if out and not (_is_cjk(out[-1]) and _is_cjk(line[0])):
            out += " "
        out += line
    return out


def _is_cjk(ch: str) -> bool:
    return "\u2e80" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" or "\uff00" <= ch <= "\uffef"


# --- PDF ---------------------------------------------------------------------------------------


def _load_pdf(data: bytes, name: str, mime: str) -> Loaded:
    import pypdf

    if b"%%EOF" not in data[-8192:]:
        raise damaged_error(name, "PDF")  # cut short: the end-of-file marker is missing
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        encrypted = reader.is_encrypted
    except Exception as exc:  # noqa: BLE001 - pypdf raises many kinds of errors on bad files
        raise damaged_error(name, "PDF") from exc
    if encrypted:
        try:
            opened = bool(reader.decrypt(""))  # restrictions-only PDFs open with an empty password
        except Exception:  # noqa: BLE001 - e.g. an unsupported cipher
            opened = False
        if not opened:
            raise IngestError(
                f"{name} is password-protected, so Knowbot cannot read it; please remove the password "
                f"(or print it to a new PDF) and send it again."
            )
    blocks: list[Block] = []
    for number, page in enumerate(reader.pages, start=1):
        for para in _paragraphs(_page_text(page)):
            blocks.append(Block(para, "paragraph", f"page {number}"))
    if not blocks and len(reader.pages):
        raise IngestError(
            f"{name} has no text layer (it looks like a scanned image) and Knowbot does not do OCR; "
            f"please send a PDF with selectable text or the original Word file."
        )
    title = _meta_title(reader.metadata.title if reader.metadata else "")
    return title, blocks, len(reader.pages)


def _page_text(page) -> str:
    try:
        text = page.extract_text(extraction_mode="layout")  # keeps vertical gaps as blank lines
    except Exception:  # noqa: BLE001 - layout mode is stricter; fall back to the plain mode
        log.debug("layout extraction failed; using plain extraction", exc_info=True)
        text = page.extract_text()
    return text or ""


def _paragraphs(text: str) -> list[str]:
    paras = (_join_lines(para.split("\n")) for para in re.split(r"\n[ \t\f]*\n", text.replace("\r", "")))
    return [re.sub(r"[ \t]{2,}", " ", p) for p in paras if p]


# --- Word --------------------------------------------------------------------------------------

_HEADING_STYLE = re.compile(r"^(?:heading|标题)\s*([1-9])$", re.I)


def _load_docx(data: bytes, name: str, mime: str) -> Loaded:
    import docx
    from docx.table import Table

    doc = docx.Document(io.BytesIO(data))
    outline, blocks = Outline(), []
    for item in doc.iter_inner_content():
        if isinstance(item, Table):
            blocks += table_blocks(_docx_rows(item), outline.location, outline.path)
        elif text := item.text.strip():
            level = _docx_heading_level(item)
            if level is not None:
                blocks.append(outline.enter(level, clean_text(text)))
            else:
                blocks.append(outline.block(text, "list" if _docx_is_list(item) else "paragraph"))
    return _meta_title(doc.core_properties.title) or _first_heading(blocks), blocks, None


def _first_heading(blocks: list[Block]) -> str:
    return next((b.text for b in blocks if b.kind == "heading"), "")


def _docx_heading_level(par) -> int | None:
    style = par.style
    names = []
    while style is not None:
        names.append(style)
        style = style.base_style
    for st in names[:1]:
        if (st.name or "").lower() == "title":
            return 0
        match = _HEADING_STYLE.match((st.name or "").strip())
        if match:
            return int(match.group(1))
    for element in [par._p, *(st.element for st in names)]:
        levels = element.xpath("./w:pPr/w:outlineLvl/@w:val")
        if levels and levels[0].isdigit() and int(levels[0]) < 9:
            return int(levels[0]) + 1
    return None


def _docx_is_list(par) -> bool:
    style_name = (par.style.name if par.style is not None else "") or ""
    return style_name.lower().startswith("list") or bool(par._p.xpath("./w:pPr/w:numPr"))


def _docx_rows(table) -> list[list[str]]:
    rows = []
    for row in table.rows:
        cells, seen = [], set()
        for cell in row.cells:
            if id(cell._tc) in seen:
                continue  # a merged cell repeats once per grid column
            seen.add(id(cell._tc))
            cells.append(clean_text(cell.text))
        rows.append(cells)
    return rows


# --- Excel and CSV -----------------------------------------------------------------------------


def _cell_str(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dt.datetime) and value.time() == dt.time(0):
        return value.date().isoformat()
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    return clean_text(str(value))


def _load_xlsx(data: bytes, name: str, mime: str) -> Loaded:
    import openpyxl

    wb = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    try:
        blocks: list[Block] = []
        sheets = wb.worksheets
        for ws in sheets:
            ws.reset_dimensions()  # rows as stored: a bogus <dimension> must not pad every row
            rows = ((i, [_cell_str(v) for v in r]) for i, r in enumerate(ws.iter_rows(values_only=True), 1))
            blocks += _record_blocks(rows, f"sheet {ws.title}, ", (ws.title,))
        return _meta_title(wb.properties.title), blocks, len(sheets)
    finally:
        wb.close()


def _record_blocks(rows: Iterable[tuple[int, list[str]]], prefix: str, path: tuple[str, ...]) -> list[Block]:
    """Numbered rows as 'row' blocks: the first non-empty row is the header of the rest."""
    header: list[str] | None = None
    header_at = 0
    blocks: list[Block] = []
    for number, values in rows:
        if not any(values):
            continue
        if header is None:
            header, header_at = values, number
            continue
        blocks.append(Block(_record(header, values), "row", f"{prefix}row {number}", path))
    if header is not None and not blocks:
        blocks.append(Block(" | ".join(v for v in header if v), "row", f"{prefix}row {header_at}", path))
    return blocks


def _load_csv(data: bytes, name: str, mime: str) -> Loaded:
    text = decode_text(data, name, _charset(mime))
    dialect = csv_dialect(text, min_rows=1)
    if dialect is None:
        dialect = csv.excel_tab if name.lower().endswith(".tsv") else csv.excel
    try:
        records = csv.reader(io.StringIO(text), dialect)
        rows = list(enumerate(([clean_text(v) for v in row] for row in records), start=1))
    except csv.Error as exc:
        raise damaged_error(name, "CSV") from exc
    return "", _record_blocks(rows, "", ()), None


# --- PowerPoint --------------------------------------------------------------------------------


def _load_pptx(data: bytes, name: str, mime: str) -> Loaded:
    import pptx

    prs = pptx.Presentation(io.BytesIO(data))
    blocks: list[Block] = []
    first_title = ""
    for number, slide in enumerate(prs.slides, start=1):
        location = f"slide {number}"
        title_shape = slide.shapes.title
        slide_title = clean_text(title_shape.text_frame.text) if title_shape is not None else ""
        path = (slide_title,) if slide_title else ()
        if slide_title:
            first_title = first_title or slide_title
            blocks.append(Block(slide_title, "heading", location, path))
        for shape in _pptx_shapes(slide.shapes):
            if title_shape is not None and shape.shape_id == title_shape.shape_id:
                continue
            if getattr(shape, "has_text_frame", False) and shape.has_text_frame:
                lines = [p.text.strip() for p in shape.text_frame.paragraphs if p.text.strip()]
                if lines:
                    kind: BlockKind = "list" if len(lines) > 1 else "paragraph"
                    blocks.append(Block("\n".join(lines), kind, location, path))
            elif getattr(shape, "has_table", False) and shape.has_table:
                rows = [[clean_text(c.text) for c in row.cells] for row in shape.table.rows]
                blocks += table_blocks(rows, location, path)
        if slide.has_notes_slide:
            notes = slide.notes_slide.notes_text_frame
            if notes is not None and notes.text.strip():
                blocks.append(Block(notes.text.strip(), "paragraph", f"{location} notes", path))
    title = _meta_title(prs.core_properties.title) or first_title
    return title, blocks, len(prs.slides)


def _pptx_shapes(shapes) -> Iterable:
    from pptx.shapes.group import GroupShape

    for shape in shapes:
        if isinstance(shape, GroupShape):
            yield from _pptx_shapes(shape.shapes)
        else:
            yield shape


# --- Markdown and plain text -------------------------------------------------------------------

_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
_ATX = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d{1,9}[.)])\s+")
_RULE = re.compile(r"^\s{0,3}([-*_])(?:\s*\1){2,}\s*$")
_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")


def _load_markdown(data: bytes, name: str, mime: str) -> Loaded:
    lines = decode_text(data, name, _charset(mime)).split("\n")
    meta_title, start = _front_matter(lines)
    outline, blocks, buf = Outline(), [], []

    def flush() -> None:
        if buf:
            blocks.extend(_md_block(buf, outline))
            buf.clear()

    i = start
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if fence:
            flush()
            mark, code = fence.group(1), []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(mark[0] * len(mark)):
                code.append(lines[i])
                i += 1
            if "\n".join(code).strip():
                blocks.append(outline.block("\n".join(code).strip("\n"), "code"))
        elif _ATX.match(line):
            flush()
            match = _ATX.match(line)
            if match.group(2).strip():
                blocks.append(outline.enter(len(match.group(1)), clean_text(match.group(2))))
        elif not line.strip() or (not buf and _RULE.match(line)):
            flush()
        elif len(buf) == 1 and re.match(r"^\s{0,3}(=+|-+)\s*$", line) and not _LIST_ITEM.match(buf[0]):
            text = clean_text(buf.pop())
            blocks.append(outline.enter(1 if "=" in line else 2, text))
        elif buf and (_LIST_ITEM.match(line) is not None) != (_LIST_ITEM.match(buf[0]) is not None) \
                and not line.startswith((" ", "\t")):
            flush()
            buf.append(line)
        else:
            buf.append(line)
        i += 1
    flush()
    return meta_title or _first_heading(blocks), blocks, None


def _front_matter(lines: list[str]) -> tuple[str, int]:
    """Skip YAML (---) or TOML (+++) front matter; return its title and the first body line."""
    if not lines or lines[0].strip() not in ("---", "+++"):
        return "", 0
    mark = lines[0].strip()
    for end in range(1, min(len(lines), 300)):
        if lines[end].strip() == mark:
            title = ""
            for line in lines[1:end]:
                match = re.match(r"^title\s*[:=]\s*(.+?)\s*$", line)
                if match:
                    title = match.group(1).strip("'\"")
                    break
            return clean_text(title), end + 1
    return "", 0


def _md_block(buf: list[str], outline: Outline) -> list[Block]:
    if len(buf) >= 2 and "|" in buf[0] and _TABLE_SEP.match(buf[1]):
        rows = [[clean_text(c) for c in ln.strip().strip("|").split("|")] for ln in [buf[0], *buf[2:]]]
        return table_blocks(rows, outline.location, outline.path)
    if _LIST_ITEM.match(buf[0]):
        return [outline.block("\n".join(ln.rstrip() for ln in buf).strip("\n"), "list")]
    return [outline.block(_join_lines(buf))]


def _load_text(data: bytes, name: str, mime: str) -> Loaded:
    text = decode_text(data, name, _charset(mime))
    blocks: list[Block] = []
    line_no, para, start = 0, [], 1
    for line_no, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            if not para:
                start = line_no
            para.append(line.rstrip())
        elif para:
            blocks.append(Block("\n".join(para).strip(), "paragraph", f"line {start}"))
            para = []
    if para:
        blocks.append(Block("\n".join(para).strip(), "paragraph", f"line {start}"))
    return "", blocks, None


def _charset(mime: str) -> str:
    match = re.search(r"charset\s*=\s*[\"']?([\w.:-]+)", mime or "", re.I)
    return match.group(1) if match else ""


def _load_html(data: bytes, name: str, mime: str) -> Loaded:
    from knowledge.fetch import extract_html

    meta = re.search(rb"<meta[^>]+charset\s*=\s*[\"']?([\w.:-]+)", data[:4096], re.I)
    charset = _charset(mime) or (meta.group(1).decode("ascii", "replace") if meta else "")
    return extract_html(decode_text(data, name, charset))


_LOADERS: dict[str, Callable[[bytes, str, str], Loaded]] = {
    "pdf": _load_pdf,
    "docx": _load_docx,
    "xlsx": _load_xlsx,
    "csv": _load_csv,
    "pptx": _load_pptx,
    "markdown": _load_markdown,
    "text": _load_text,
    "html": _load_html,
}
