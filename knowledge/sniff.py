"""Tell what kind of document some bytes are, and whether a zip-based one is safe to open.

`detect_kind` answers one of: pdf, docx, xlsx, pptx, csv, markdown, html, text, or raises
`IngestError` with a sentence that says what the file is and what Knowbot accepts. The kind comes
from the content first (magic numbers, zip member names, decoded text) and the name second.
`check_zip` bounds what a .docx/.xlsx/.pptx may expand to before any library opens it.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import unicodedata
import zipfile
import zlib

from bot.errors import IngestError

ACCEPTED = (
    "PDF, Word (.docx), Excel (.xlsx), CSV, PowerPoint (.pptx), Markdown, HTML and plain text"
)

MAX_ZIP_MEMBERS = 10_000
MAX_MEMBER_RATIO = 200  # uncompressed/compressed, checked for members over 1 MiB
_RATIO_FLOOR = 1024 * 1024
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, NotImplementedError, OSError, ValueError)
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")

# (prefix, what it is) for binary formats people are likely to send by mistake.
_BINARY_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "an image"),
    (b"\xff\xd8\xff", "an image"),
    (b"GIF87a", "an image"),
    (b"GIF89a", "an image"),
    (b"BM", "an image"),
    (b"II*\x00", "an image"),
    (b"MM\x00*", "an image"),
    (b"\x00\x00\x01\x00", "an image"),
    (b"8BPS", "an image"),
    (b"MZ", "a program"),
    (b"\x7fELF", "a program"),
    (b"\xfe\xed\xfa\xce", "a program"),
    (b"\xfe\xed\xfa\xcf", "a program"),
    (b"\xce\xfa\xed\xfe", "a program"),
    (b"\xcf\xfa\xed\xfe", "a program"),
    (b"\xca\xfe\xba\xbe", "a program"),
    (b"\x00asm", "a program"),
    (b"\x1f\x8b", "a compressed archive"),
    (b"7z\xbc\xaf\x27\x1c", "a compressed archive"),
    (b"Rar!\x1a\x07", "a compressed archive"),
    (b"BZh", "a compressed archive"),
    (b"\xfd7zXZ\x00", "a compressed archive"),
    (b"\x28\xb5\x2f\xfd", "a compressed archive"),
    (b"ID3", "an audio file"),
    (b"OggS", "an audio or video file"),
    (b"fLaC", "an audio file"),
    (b"\x1aE\xdf\xa3", "a video file"),
    (b"{\\rtf", "a Rich Text (.rtf) file"),
    (b"SQLite format 3\x00", "a database file"),
)

_TEXT_HINTS = {
    ".md": "markdown", ".markdown": "markdown", ".mdown": "markdown", ".mkd": "markdown",
    ".csv": "csv", ".tsv": "csv",
    ".txt": "text", ".text": "text", ".log": "text",
    ".html": "html", ".htm": "html", ".xhtml": "html",
}
_MIME_HINTS = {
    "text/markdown": "markdown", "text/x-markdown": "markdown",
    "text/csv": "csv", "text/tab-separated-values": "csv",
    "text/plain": "text",
    "text/html": "html", "application/xhtml+xml": "html",
}
_ZIP_NAME_KINDS = {".docx": "docx", ".xlsx": "xlsx", ".pptx": "pptx"}

_HTML_STRONG = re.compile(r"^(?:<\?xml[^>]*>\s*)?(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html)\b", re.I | re.S)
_HTML_TAG = re.compile(
    r"<(?:html|head|body|div|p|article|section|main|table|meta|title|h[1-6]|ul|span|a)\b[^>]*>", re.I
)
_MD_HEADING = re.compile(r"^#{1,6}\s+\S", re.M)
_MD_FENCE = re.compile(r"^\s{0,3}(?:```|~~~)", re.M)
_MD_FRONT_MATTER = re.compile(r"\A(?:---|\+\+\+)\s*\n")
_MD_LINK = re.compile(r"\[[^\]\n]+\]\([^)\s]+\)")
_MD_LIST = re.compile(r"^\s{0,3}(?:[-*+]|\d{1,3}[.)])\s+\S", re.M)


def unsupported_error(filename: str, what: str, hint: str = "") -> IngestError:
    """Build the IngestError for a file type Knowbot cannot read."""
    name = filename or "This file"
    extra = f"; {hint}" if hint else ""
    return IngestError(f"{name} is {what}, which Knowbot cannot read{extra}; accepted types are {ACCEPTED}.")


def damaged_error(filename: str, label: str) -> IngestError:
    """Build the IngestError for a file that is damaged or not what its type claims."""
    name = filename or "the file"
    return IngestError(
        f"Could not read {name}: it looks damaged or is not a valid {label} file, "
        f"so please re-save or re-export it and send it again (accepted types are {ACCEPTED})."
    )


def empty_error(filename: str) -> IngestError:
    """Build the IngestError for an empty file or one without any text."""
    name = filename or "The file"
    return IngestError(
        f"{name} is empty: it contains no text to learn from, so please send a document with text in it."
    )


def _ext(filename: str) -> str:
    base = filename.replace("\\", "/").rsplit("/", 1)[-1].lower()
    return "." + base.rsplit(".", 1)[1] if "." in base else ""


def _mime(declared_mime: str) -> str:
    return declared_mime.split(";", 1)[0].strip().lower()


def detect_kind(data: bytes, filename: str = "", declared_mime: str = "") -> str:
    """Return the document kind of `data` (pdf, docx, xlsx, pptx, csv, markdown, html, text)."""
    if not data.strip():
        raise empty_error(filename)
    if data.startswith(_ZIP_MAGICS):
        return _zip_kind(data, filename)
    if b"%PDF-" in data[:1024]:  # readers accept up to 1 KB of junk before the header
        return "pdf"
    if data.startswith(_OLE_MAGIC):
        if "EncryptedPackage".encode("utf-16-le") in data:
            name = filename or "This Office file"
            raise IngestError(
                f"{name} is password-protected, so Knowbot cannot read it; please remove the "
                f"password and send it again (accepted types are {ACCEPTED})."
            )
        raise unsupported_error(
            filename, "an old-style Office file (.doc, .xls or .ppt)",
            "please save it as .docx, .xlsx or .pptx and send it again",
        )
    for magic, what in _BINARY_MAGICS:
        if data.startswith(magic):
            if magic.decode("latin-1").isprintable() and magic != b"{\\rtf" and not _looks_binary(data[:512]):
                continue  # a text file may well start with "BM" or "ID3"
            raise unsupported_error(filename, what)
    if len(data) > 12 and data[4:8] == b"ftyp":
        raise unsupported_error(filename, "an image, audio or video file")
    if data[:4] == b"RIFF" and data[8:12] in (b"WEBP", b"WAVE", b"AVI "):
        raise unsupported_error(filename, "an image, audio or video file")
    text = decode_text(data, filename)
    return classify_text(text, filename, declared_mime)


def _zip_kind(data: bytes, filename: str) -> str:
    """Tell docx/xlsx/pptx apart by the zip's member names (reads only the central directory)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = zf.namelist()
    except _ZIP_ERRORS as exc:
        kind = _ZIP_NAME_KINDS.get(_ext(filename))
        if kind:
            raise damaged_error(filename, kind_label(kind)) from exc
        raise unsupported_error(filename, "a damaged or unknown archive") from exc
    for prefix, kind in (("word/", "docx"), ("xl/", "xlsx"), ("ppt/", "pptx")):
        if any(n.startswith(prefix) for n in names):
            return kind
    if "mimetype" in names and "content.xml" in names:
        raise unsupported_error(
            filename, "an OpenDocument file", "please save it as .docx, .xlsx or .pptx and send it again"
        )
    raise unsupported_error(filename, "a zip archive")


def check_zip(data: bytes, name: str, kind: str, max_unpacked: int) -> None:
    """Refuse a zip-based file whose members would expand past the bounds, or that declares a DTD."""
    label = kind_label(kind)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_ZIP_MEMBERS:
                raise _bomb(name, label, f"it has {len(infos)} parts")
            total = sum(i.file_size for i in infos)
            if total > max_unpacked:
                limit = mb_text(max_unpacked)
                raise _bomb(name, label, f"it would expand to {mb_text(total)} MB (the limit is {limit} MB)")
            for info in infos:
                ratio = info.file_size / max(info.compress_size, 1)
                if info.file_size > _RATIO_FLOOR and ratio > MAX_MEMBER_RATIO:
                    raise _bomb(name, label, "one of its parts is compressed suspiciously well")
            for info in infos:
                if info.filename.endswith((".xml", ".rels")):
                    with zf.open(info) as member:
                        if _declares_dtd(member.read(65536)):
                            raise damaged_error(name, label)
    except _ZIP_ERRORS as exc:
        raise damaged_error(name, label) from exc


_PROLOG_ITEM = re.compile(r"\s*(?:<\?.*?\?>|<!--.*?-->)", re.S)


def _declares_dtd(head: bytes) -> bool:
    """Whether an XML part has a DOCTYPE (or an unreadable prolog) before its root element.

    Office XML never carries a DTD, so refusing one rules out entity-expansion and external-entity
    tricks whatever the XML parser underneath does.
    """
    encoding = "utf-16" if head[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
    text = head.decode(encoding, errors="ignore")
    pos = 0
    while match := _PROLOG_ITEM.match(text, pos):
        pos = match.end()
    rest = text[pos:].lstrip()
    return bool(rest) and (not rest.startswith("<") or rest.startswith("<!"))


def _bomb(name: str, label: str, why: str) -> IngestError:
    return IngestError(
        f"{name} was refused because {why}, which no real {label} file needs; "
        f"please re-save it as an ordinary document ({ACCEPTED})."
    )


def mb_text(n: int) -> str:
    """A byte count in MB for messages: '1.5', '50'."""
    return f"{n / (1024 * 1024):.1f}".removesuffix(".0")


def kind_label(kind: str) -> str:
    """A human name for a kind, as used in messages: 'Word (.docx)', 'PDF'."""
    return {
        "pdf": "PDF", "docx": "Word (.docx)", "xlsx": "Excel (.xlsx)", "pptx": "PowerPoint (.pptx)",
        "csv": "CSV", "markdown": "Markdown", "html": "HTML", "text": "text",
    }.get(kind, kind)


def _looks_binary(sample: bytes) -> bool:
    if not sample:
        return False
    if b"\x00" in sample:
        return True
    controls = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13, 27))
    return controls / len(sample) > 0.05


def decode_text(data: bytes, filename: str = "", charset: str = "") -> str:
    """Decode a text file: BOMs, UTF-8, a declared charset, then a detected one (GB18030 and others)."""
    text = _decode(data, charset)
    if text is None:
        raise unsupported_error(filename, "a binary file of an unknown type")
    sample = text[:20000]
    controls = sum(
        1 for ch in sample if unicodedata.category(ch) == "Cc" and ch not in "\t\n\r\f\v\x1b"
    )
    if sample and controls / len(sample) > 0.005:
        raise unsupported_error(filename, "a binary file of an unknown type")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _decode(data: bytes, charset: str) -> str | None:
    for bom, enc in (
        (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            try:
                return data.decode(enc)
            except UnicodeDecodeError:
                return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if charset:
        enc = "gb18030" if charset.lower() in ("gb2312", "gbk", "gb_2312-80") else charset
        try:
            return data.decode(enc)
        except (UnicodeDecodeError, LookupError):
            pass
    if b"\x00" not in data[:4096]:
        # Chinese files are most often GB18030 (a superset of GBK/GB2312). Short or mostly-ASCII
        # ones fool statistical detection, so take GB18030 when it decodes cleanly and its Han
        # characters are mostly the 3,755 common ones (GB2312 level 1), as real Chinese text is.
        try:
            text = data.decode("gb18030")
        except UnicodeDecodeError:
            text = None
        if text is not None and _common_hanzi_ratio(text) >= 0.8:
            return text
    from charset_normalizer import from_bytes  # imported lazily: it is slow to import

    best = from_bytes(data).best()
    if best is None or not best.encoding:
        return None
    enc = "gb18030" if best.encoding in ("gb2312", "gbk", "hz") else best.encoding
    try:
        return data.decode(enc)
    except (UnicodeDecodeError, LookupError):
        return str(best)


def _common_hanzi_ratio(text: str) -> float:
    hanzi = [ch for ch in text[:20000] if "\u4e00" <= ch <= "\u9fff"]
    if not hanzi:
        return 0.0
    common = 0
    for ch in hanzi:
        try:
            common += 0xB0 <= ch.encode("gb2312")[0] <= 0xD7
        except UnicodeEncodeError:
            pass
    return common / len(hanzi)


def looks_like_html(text: str, strong_only: bool = False) -> bool:
    """Whether decoded text is an HTML document (strong: starts like one; weak: has several tags)."""
    head = text.lstrip("\ufeff \t\n")[:2000]
    if _HTML_STRONG.match(head):
        return True
    if strong_only:
        return False
    return re.search(r"<(?:html|head|body)\b", head, re.I) is not None or len(_HTML_TAG.findall(head)) >= 3


def classify_text(text: str, filename: str = "", declared_mime: str = "") -> str:
    """Tell html, csv, markdown and text apart, with the name or MIME type as a hint."""
    if not text.strip():
        raise empty_error(filename)
    hint = _TEXT_HINTS.get(_ext(filename)) or _MIME_HINTS.get(_mime(declared_mime))
    if looks_like_html(text, strong_only=hint in ("markdown", "csv", "text")):
        return "html"
    if hint in ("markdown", "csv", "text"):
        return hint
    if _markdown_score(text) >= 2:
        return "markdown"
    if csv_dialect(text, min_rows=3) is not None:
        return "csv"
    if _markdown_score(text) >= 1:
        return "markdown"
    return "text"


def _markdown_score(text: str) -> int:
    sample = text[:20000]
    score = 0
    if _MD_FRONT_MATTER.match(sample):
        score += 2
    if _MD_HEADING.search(sample):
        score += 2
    if _MD_FENCE.search(sample):
        score += 2
    if _MD_LINK.search(sample):
        score += 1
    if len(_MD_LIST.findall(sample)) >= 2:
        score += 1
    return score


def csv_dialect(text: str, min_rows: int = 2) -> type[csv.Dialect] | csv.Dialect | None:
    """The CSV dialect of `text` when at least `min_rows` rows agree on 2+ columns, else None."""
    lines = [ln for ln in text[:64000].split("\n") if ln.strip()][:50]
    if len(lines) < min_rows:
        return None
    if len(lines) == 50:
        lines = lines[:-1]  # the last line may be cut short by the sample
    sample = "\n".join(lines)
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        return None
    try:
        counts = {len(row) for row in csv.reader(io.StringIO(sample), dialect) if row}
    except csv.Error:
        return None
    if len(counts) != 1 or counts.pop() < 2:
        return None
    return dialect
