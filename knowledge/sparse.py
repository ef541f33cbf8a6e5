"""BM25 sparse vectors for Chinese and English text, made in-process by Qdrant Edge's Bm25.

The Multilingual tokenizer segments Chinese into words by itself ("报销流程" -> 报销, 流程) and
stems English ("passwords" -> password). Chinese and English stop words are dropped. Weights are
term frequencies only; both vector stores keep the "bm25" vector with the IDF modifier, so the
engine applies IDF over the stored collection at query time.

One quirk is corrected here: the Multilingual tokenizer drops every token made only of digits
("error 404" keeps just "error", "2024-01-05" vanishes). Numbers matter in team documents (error
codes, room and phone numbers, amounts), so each free-standing number is rewritten as a word of
its own ("404" -> " n404 ") before tokenizing. Documents and queries both go through this class,
so they always agree; vectors made by a bare `Bm25` do not match these and must not be mixed in.
"""

from __future__ import annotations

import re
import unicodedata

from qdrant_edge import Bm25, Bm25Config, Language, StopwordsSet, TokenizerType

from knowledge.types import SparseVector

# A number not glued to a Latin word: "404", "12.5", "1,000", "10:30"; not "v2", "4G", "E1234",
# which the tokenizer already keeps as words.
_NUMBER = re.compile(r"(?<![A-Za-z0-9_.,:])\d+(?:[.,:]\d+)*(?![A-Za-z0-9_])")

_EMPTY = SparseVector(indices=(), values=())


def _prepare(text: str) -> str:
    """Fold full-width forms and turn free-standing numbers into words the tokenizer keeps."""
    text = unicodedata.normalize("NFKC", text)
    return _NUMBER.sub(lambda m: f" n{m.group(0)} ", text)


class SparseEncoder:
    """Text -> BM25 sparse vector (term frequencies; the store applies IDF). Thread-safe."""

    def __init__(self, *, k: float = 1.2, b: float = 0.75, avg_len: float = 256.0) -> None:
        """Build the model; k, b and avg_len are the BM25 constants baked into document weights."""
        # Changing k, b or avg_len changes document weights: re-index after changing them.
        self._model = Bm25(
            Bm25Config(
                k=k,
                b=b,
                avg_len=avg_len,
                tokenizer=TokenizerType.Multilingual,
                stopwords=StopwordsSet(languages={Language.English, Language.Chinese}),
            )
        )

    def encode_document(self, text: str) -> SparseVector:
        """Sparse vector of a stored chunk: term-frequency weights saturated by k and b."""
        if not text.strip():
            return _EMPTY
        # Bm25 is an immutable Rust object: calls from several threads at once are safe.
        return _convert(self._model.embed_document(_prepare(text)))

    def encode_query(self, text: str) -> SparseVector:
        """Sparse vector of a search query: weight 1 for each distinct term."""
        if not text.strip():
            return _EMPTY
        return _convert(self._model.embed_query(_prepare(text)))


def _convert(vector: object) -> SparseVector:
    """The engine's sparse vector as Knowbot's frozen value type."""
    indices = tuple(int(i) for i in vector.indices)  # type: ignore[attr-defined]
    values = tuple(float(v) for v in vector.values)  # type: ignore[attr-defined]
    return SparseVector(indices=indices, values=values)
