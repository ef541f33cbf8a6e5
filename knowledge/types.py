"""Value types of the knowledge pipeline: loaded documents, blocks, chunks, stored points, receipts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

BlockKind = Literal["heading", "paragraph", "row", "table", "list", "code"]


@dataclass(frozen=True)
class Block:
    """One structural unit a loader found: a heading, a paragraph, a table row."""

    text: str
    kind: BlockKind = "paragraph"
    location: str = ""  # "page 3", "sheet Prices, row 7", "slide 2", "Setup > VPN"
    heading_path: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoadedDocument:
    """What a loader made of one file or page."""

    title: str
    kind: str  # pdf, docx, xlsx, csv, pptx, markdown, html, text
    blocks: tuple[Block, ...]
    origin: str = ""  # the file name or URL it came from
    pages: int | None = None  # pages, slides or sheets, when the format has them
    url: str = ""


@dataclass(frozen=True)
class Chunk:
    """A piece of a document sized for the embedding model, with where it came from."""

    text: str
    location: str
    ordinal: int
    tokens: int
    heading_path: tuple[str, ...] = ()


@dataclass(frozen=True)
class SparseVector:
    """A BM25 sparse vector: term indices and weights."""

    indices: tuple[int, ...]
    values: tuple[float, ...]


@dataclass(frozen=True)
class Point:
    """One chunk as stored in the vector store."""

    id: str
    dense: tuple[float, ...]
    sparse: SparseVector
    payload: dict[str, object] = field(default_factory=dict)
    # more named dense vectors beside "dense": the cross-lingual one, keyed by its vector name
    extra: dict[str, tuple[float, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    """One search result from the vector store."""

    id: str
    score: float
    payload: dict[str, object]


@dataclass(frozen=True)
class IngestReceipt:
    """What an ingest did: added, updated or unchanged, with its size and time."""

    status: str  # added, updated, unchanged
    source_id: str
    title: str
    kb: str
    kind: str
    chunks: int
    pages: int | None
    seconds: float
    origin: str

    def text(self) -> str:
        """The receipt as one sentence for the chat."""
        if self.status == "unchanged":
            return f"“{self.title}” is unchanged: the knowledge base already has this version."
        pages = ""
        if self.pages:
            unit = {"pptx": "slide", "xlsx": "sheet"}.get(self.kind, "page")
            pages = f"{self.pages} {unit}{'s' if self.pages != 1 else ''}, "
        verb = "Added" if self.status == "added" else "Updated"
        return (f"{verb} “{self.title}” in the knowledge base: {pages}{self.chunks} chunk{'s' if self.chunks != 1 else ''}, "
                f"in {self.seconds:.1f} s. Ask me about it.")

    def as_dict(self) -> dict[str, object]:
        """The receipt as JSON-ready data."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}
