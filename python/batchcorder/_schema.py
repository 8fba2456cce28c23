"""Schemas: taking one from a caller or from C, and showing one in a repr."""

from __future__ import annotations

from typing import Any, Callable

import pyarrow as pa

from ._errors import check
from ._native import ffi


def as_schema(schema: Any) -> pa.Schema:
    """A caller's target schema as a ``pyarrow.Schema``."""
    if isinstance(schema, pa.Schema):
        return schema
    if hasattr(schema, "__arrow_c_schema__"):
        return pa.schema(schema)
    raise TypeError(
        f"target_schema must be a pyarrow.Schema or implement __arrow_c_schema__, "
        f"got {type(schema).__name__}"
    )


def schema_from_c(fill: Callable[[Any], int]) -> pa.Schema:
    """Call ``fill(struct ArrowSchema *)`` and import the result into pyarrow."""
    c_schema = ffi.new("struct ArrowSchema *")
    check(fill(c_schema))
    return pa.Schema._import_from_c(int(ffi.cast("uintptr_t", c_schema)))


def fields(schema: pa.Schema, most: int = 4) -> str:
    """A short field list for a repr."""
    shown = ", ".join(f"{f.name}: {f.type}" for f in list(schema)[:most])
    return shown + (f", ... {len(schema) - most} more" if len(schema) > most else "")
