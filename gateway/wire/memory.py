"""Request bodies of the memory API, validated strictly (unknown fields are refused)."""

from __future__ import annotations

from array import array
from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.jsonsafe import MAX_JSON_DEPTH, nests_deeper_than

NAMESPACE_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"  # a memory namespace (also what a key may be granted)

# Vectors are stored and indexed as float32: a value must round to a finite float32 (magnitude
# below 2**128 - 2**103; beyond that it rounds to infinity). NaN and Infinity are refused too
# (orjson refuses the literals, but pydantic would read the strings "NaN" and "inf").
FLOAT32_LIMIT = 2.0**128 - 2.0**103
Float32 = Annotated[float, Field(allow_inf_nan=False, gt=-FLOAT32_LIMIT, lt=FLOAT32_LIMIT)]


def _has_direction(vector: list[float]) -> list[float]:
    """Memories are compared by cosine, the angle between vectors: a vector of zeros has none.
    Stored, it scored 1.0 against any other zero vector and 0.0 against the rest; searched
    with, it answered the zero vectors first with score 1.0."""
    if not any(array("f", vector)):  # as stored: 1e-50 is 0 in float32
        raise ValueError("a vector of zeros has no direction to compare by cosine similarity")
    return vector


Vector = Annotated[list[Float32], Field(min_length=1), AfterValidator(_has_direction)]


def _no_nul(text: str) -> str:
    """A NUL (U+0000) cannot be trusted to a stored text: PostgreSQL's text refuses it and
    Snowflake's VARCHAR is not documented to keep it, so a memory's text could be cut, refused by
    one store and kept by another. Other control characters (tabs, newlines, ESC) are text."""
    if "\x00" in text:
        raise ValueError(f"the text holds a NUL character (U+0000) at index {text.index(chr(0))}; remove it")
    return text


# A stored text: content and data_source.
StoredText = Annotated[str, AfterValidator(_no_nul)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _StrictJSON(_Strict):
    """A JSON body's fields: unknown ones refused, and no coercion between JSON types (a number
    sent as the string ``"0.5"``, ``true`` as 1.0, ``5.0`` as the integer 5 are refused, as
    OpenAI's API refuses them; lax, pydantic read ``"0.5"`` and ``true`` as numbers, so a client
    that sent the wrong type never learned of it)."""

    model_config = ConfigDict(extra="forbid", strict=True)


Namespace = Annotated[str, Field(pattern=NAMESPACE_PATTERN)]
# The store's column is VARCHAR(100) on Snowflake (memory/sql.py), which refuses a longer value
# at insert: bounded here for every store, so a write is the client's 400, never the store's error.
MAX_DATA_SOURCE_CHARS = 100
DataSource = Annotated[StoredText, Field(max_length=MAX_DATA_SOURCE_CHARS)]


class MemoryIn(_StrictJSON):
    namespace: str = Field(pattern=NAMESPACE_PATTERN)
    content: StoredText = Field(min_length=1)
    id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,128}$")
    embedding: Vector | None = None
    metadata: dict[str, Any] | None = None
    data_source: DataSource | None = None
    confidence_score: float = Field(1.0, ge=0, le=1)
    importance_score: float = Field(0.5, ge=0, le=1)


class MemoryBatchIn(_StrictJSON):
    memories: list[MemoryIn] = Field(min_length=1, max_length=1000)


class MemoryPatchIn(_StrictJSON):
    content: StoredText | None = Field(None, min_length=1)
    embedding: Vector | None = None
    metadata: dict[str, Any] | None = None
    data_source: DataSource | None = None
    confidence_score: float | None = Field(None, ge=0, le=1)
    importance_score: float | None = Field(None, ge=0, le=1)
    processing_status: Literal["active", "archived"] | None = None
    # The row_version read: the change is made only if the memory still has it (else 409).
    row_version: int | None = Field(None, ge=1)

    @field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        """A field sent as ``null`` was read as left out: a client clearing ``data_source`` or
        ``metadata`` got a 200 and nothing changed. Only fields sent are validated."""
        if value is None:
            raise ValueError("null is not a value here; leave the field out to keep what is stored")
        return value


class MemorySearchIn(_StrictJSON):
    query: str | None = Field(None, min_length=1)
    vector: Vector | None = None
    top_k: int = Field(10, ge=1, le=100)
    namespaces: list[Namespace] | None = Field(None, min_length=1)
    data_source: DataSource | None = None
    min_confidence: float | None = Field(None, ge=0, le=1)
    processing_status: Literal["active", "archived"] | None = "active"

    @model_validator(mode="after")
    def _query_or_vector(self) -> MemorySearchIn:
        if (self.query is None) == (self.vector is None):
            raise ValueError("give exactly one of 'query' (text) and 'vector'")
        return self


class ChatMemoryIn(_Strict):
    """The ``memory`` field of a chat request: which memories to add as context."""

    namespaces: list[Namespace] = Field(min_length=1)
    top_k: int = Field(5, ge=1, le=50)


class MemoryFileIn(_Strict):
    """The form fields of ``POST /v1/memory/files`` (every value arrives as text)."""

    namespace: str = Field(pattern=NAMESPACE_PATTERN)
    data_source: DataSource | None = None
    metadata: dict[str, Any] | None = None
    chunk_chars: int | None = Field(None, ge=50, le=100_000)
    overlap_chars: int | None = Field(None, ge=0, le=50_000)
    text_field: str = Field("text", min_length=1, max_length=200)
    metadata_fields: list[str] | None = None
    format: str | None = Field(None, max_length=20)

    @model_validator(mode="before")
    @classmethod
    def _from_form(cls, values: Any) -> Any:
        """Form fields are text: ``metadata`` is JSON, ``metadata_fields`` a comma-separated list."""
        if not isinstance(values, dict):
            return values
        out = dict(values)
        for name in ("chunk_chars", "overlap_chars"):
            if out.get(name) == "":
                out.pop(name)
        if isinstance(out.get("metadata_fields"), str):
            out["metadata_fields"] = [f.strip() for f in out["metadata_fields"].split(",") if f.strip()]
        return out

    @field_validator("chunk_chars", "overlap_chars", mode="before")
    @classmethod
    def _ascii_digits(cls, value: Any) -> Any:
        """A whole number written in ASCII digits (pydantic's lax mode took ``1_000`` and
        ``" 100 "``, as ``int()`` does)."""
        if isinstance(value, str) and not (value.isascii() and value.isdigit()):
            raise ValueError("must be a whole number written in ASCII digits")
        return value

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata_json(cls, value: Any) -> Any:
        """The ``metadata`` form field is JSON text (an error names the field)."""
        if isinstance(value, str):
            too_deep = f"must nest at most {MAX_JSON_DEPTH} levels of objects and arrays"
            try:
                value = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                if not exc.msg.startswith("depth limit exceeded"):
                    raise ValueError("must be a JSON object (not valid JSON)") from None
                raise ValueError(too_deep) from None
            # Every chunk's metadata and the job's saved document hold it a few levels deeper,
            # and orjson writes 254 levels at most: deeper, the job's first save was a 500.
            # (JSON ``null`` is no metadata, as in a JSON body: it was refused as too deep.)
            if isinstance(value, dict) and nests_deeper_than(value, MAX_JSON_DEPTH):
                raise ValueError(too_deep)
        return value
