#!/usr/bin/env python3
"""Check the Julia `ccall` recipe in docs/c-users.md against include/batchcorder.h.

Julia cannot be installed on the project's machines, so the recipe is checked statically:

- every `ccall((:bc_name, lib), Ret, (Args...), values...)` names a function the header
  declares, passes as many values as it lists types, lists as many types as the C function
  has parameters, and each Julia type is ABI-compatible with the C type (`Cint` for
  `enum BcStatus`, `Ptr{...}`/`Ref{...}` for pointers, `Cstring` for `const char *` ...);
- every `struct` the recipe declares under a header struct's name (`ArrowArray`, `BcStats`)
  has the same fields, in the same order, with compatible types;
- the functions of the C contract (shared/spec/c-api.md) all appear in the recipe; other
  header functions missing from it are listed as a note.

Usage: check-julia.py docs/c-users.md include/batchcorder.h
"""

from __future__ import annotations

import re
import sys

# The contract's functions (shared/spec/c-api.md) that the recipe must show.
REQUIRED = {
    "bc_version", "bc_last_error", "bc_options_new", "bc_options_free",
    "bc_options_set_memory_capacity", "bc_options_set_disk", "bc_options_set_write_policy",
    "bc_options_set_max_readers", "bc_cache_new", "bc_cache_reader", "bc_cache_schema",
    "bc_cache_ingest_all", "bc_cache_ingested_count", "bc_cache_upstream_exhausted",
    "bc_cache_stats", "bc_cache_close", "bc_cache_free",
}
# Header functions that make no sense from Julia.
NOT_FOR_JULIA = {"bc_capsule_adopt_stream", "bc_capsule_release_stream"}

# Julia scalar types -> a canonical C scalar.
JULIA_SCALARS = {
    "Cvoid": "void", "Nothing": "void",
    "Cint": "int32", "Int32": "int32", "Cuint": "uint32", "UInt32": "uint32",
    "Clonglong": "int64", "Int64": "int64", "Culonglong": "uint64", "UInt64": "uint64",
    "Csize_t": "uint64", "Bool": "bool", "Cchar": "int8", "Int8": "int8", "UInt8": "uint8",
    "Cdouble": "double", "Float64": "double",
}
# C scalar types -> the same canonical names (char is matched by Cchar, Int8 or UInt8).
C_SCALARS = {
    "void": "void", "int": "int32", "int32_t": "int32", "uint32_t": "uint32",
    "int64_t": "int64", "uint64_t": "uint64", "size_t": "uint64", "bool": "bool",
    "char": "char", "double": "double", "uint8_t": "uint8", "int8_t": "int8",
}


class CType:
    """A C type as a base name and a pointer depth; fnptr for function pointers."""

    def __init__(self, base: str, depth: int):
        self.base, self.depth = base, depth

    def __str__(self) -> str:
        return self.base + " " + "*" * self.depth if self.depth else self.base


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def parse_ctype(decl: str, aliases: dict[str, str]) -> CType:
    depth = decl.count("*")
    words = [w for w in re.findall(r"[A-Za-z_]\w*", decl) if w not in ("const", "struct", "enum")]
    base = words[0] if words else "void"
    base = aliases.get(base, base)
    return CType(C_SCALARS.get(base, base), depth)


def parse_header(path: str):
    text = strip_comments(open(path, encoding="utf-8").read())
    aliases: dict[str, str] = {}
    for target, name in re.findall(r"typedef\s+(u?int\d+_t|bool|int)\s+(\w+)\s*;", text):
        aliases[name] = target
    for name in re.findall(r"typedef\s+enum\s+(\w+)\s*\{", text):
        aliases[name] = "int"  # C enums are int-sized
    functions: dict[str, tuple[CType, list[CType]]] = {}
    for ret, name, params in re.findall(
        r"^([A-Za-z_][\w \t*]*?)\b(bc_\w+)\s*\(([^)]*)\)\s*;", text, flags=re.M
    ):
        args = []
        params = " ".join(params.split())
        if params not in ("", "void"):
            for param in params.split(","):
                # Drop the parameter name: the last identifier, unless the type is all there is.
                param = param.strip()
                m = re.match(r"^(.*?[\s*])([A-Za-z_]\w*)$", param)
                args.append(parse_ctype(m.group(1) if m else param, aliases))
        functions[name] = (parse_ctype(ret, aliases), args)
    structs: dict[str, list[tuple[str, CType]]] = {}
    for name, body in re.findall(r"typedef\s+struct\s+(\w+)\s*\{(.*?)\}\s*\w+\s*;", text, flags=re.S):
        fields = []
        for decl in body.split(";"):
            decl = " ".join(decl.split())
            if not decl:
                continue
            fn = re.match(r"^.*\(\s*\*\s*(\w+)\s*\)\s*\(.*\)$", decl)
            if fn:
                fields.append((fn.group(1), CType("fnptr", 1)))
                continue
            m = re.match(r"^(.*?[\s*])([A-Za-z_]\w*)(\[\d+\])?$", decl)
            ctype = parse_ctype(m.group(1), aliases)
            if m.group(3):  # a fixed-size array field: its own type, as in C
                ctype = CType(ctype.base + m.group(3), ctype.depth)
            fields.append((m.group(2), ctype))
        structs[name] = fields
    return functions, structs


def julia_blocks(path: str) -> str:
    text = open(path, encoding="utf-8").read()
    blocks = re.findall(r"^```julia[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    if not blocks:
        sys.exit(f"check-julia: no ```julia block in {path}")
    # Julia comments run from # to the end of the line (no # inside the recipe's strings).
    return "\n".join(re.sub(r"#[^\n]*", "", b) for b in blocks)


def split_top(text: str) -> list[str]:
    """Split on commas that are not inside (), {} or []."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current.strip())
    return parts


def balanced(text: str, start: int) -> tuple[str, int]:
    """The text inside the parenthesis opening at text[start], and the index after it."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
    raise ValueError("unbalanced parentheses")


def compatible(jtype: str, ctype: CType, jstructs: set[str], where: str, errors: list[str]) -> None:
    jtype = jtype.strip()
    m = re.fullmatch(r"(Ptr|Ref)\{(.+)\}", jtype)
    if jtype == "Cstring":
        if not (ctype.base == "char" and ctype.depth == 1):
            errors.append(f"{where}: Cstring for C `{ctype}`")
        return
    if m:
        inner = m.group(2).strip()
        if ctype.depth == 0:
            errors.append(f"{where}: Julia {jtype} for C non-pointer `{ctype}`")
            return
        if inner in ("Cvoid", "Nothing"):
            # An untyped pointer stands for any single pointer (opaque handles, Arrow structs).
            if ctype.depth != 1:
                errors.append(f"{where}: {jtype} for C `{ctype}`; use Ref{{Ptr{{Cvoid}}}}")
            return
        compatible(inner, CType(ctype.base, ctype.depth - 1), jstructs, where, errors)
        return
    if ctype.depth != 0:
        errors.append(f"{where}: Julia {jtype} for C pointer `{ctype}`")
        return
    if jtype in jstructs:
        if jtype != ctype.base:
            errors.append(f"{where}: Julia struct {jtype} for C `{ctype}`")
        return
    canon = JULIA_SCALARS.get(jtype)
    if canon is None:
        errors.append(f"{where}: unknown Julia type {jtype}")
    elif ctype.base == "char":
        if canon not in ("int8", "uint8"):
            errors.append(f"{where}: Julia {jtype} for C char")
    elif canon != ctype.base:
        errors.append(f"{where}: Julia {jtype} ({canon}) for C `{ctype}`")


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    doc, header = sys.argv[1], sys.argv[2]
    functions, cstructs = parse_header(header)
    code = julia_blocks(doc)
    errors: list[str] = []

    # Structs declared in the recipe.
    jstructs: dict[str, list[tuple[str, str]]] = {}
    for name, body in re.findall(r"^\s*(?:mutable\s+)?struct\s+(\w+)\s*\n(.*?)^\s*end\b", code, flags=re.S | re.M):
        jstructs[name] = re.findall(r"^\s*(\w+)::(\S+)\s*$", body, flags=re.M)
    for name, jfields in jstructs.items():
        if name not in cstructs:
            continue
        cfields = cstructs[name]
        if [f for f, _ in jfields] != [f for f, _ in cfields]:
            errors.append(
                f"struct {name}: fields {[f for f, _ in jfields]} differ from the header's "
                f"{[f for f, _ in cfields]}"
            )
            continue
        for (fname, jtype), (_, ctype) in zip(jfields, cfields):
            if ctype.base == "fnptr":
                if not re.fullmatch(r"Ptr\{Cvoid\}", jtype):
                    errors.append(f"struct {name}.{fname}: function pointer needs Ptr{{Cvoid}}, not {jtype}")
                continue
            compatible(jtype, ctype, set(jstructs), f"struct {name}.{fname}", errors)

    # ccalls.
    seen: set[str] = set()
    checked = 0
    for match in re.finditer(r"\bccall\s*\(", code):
        inner, _ = balanced(code, match.end() - 1)
        parts = split_top(inner)
        target = re.fullmatch(r"\(\s*:(\w+)\s*,\s*\w+\s*\)", parts[0]) if parts else None
        if target is None:
            continue  # a call through a function pointer, such as an array's release
        name = target.group(1)
        where = f"ccall {name}"
        if name not in functions:
            errors.append(f"{where}: not declared in {header}")
            continue
        if len(parts) < 3:
            errors.append(f"{where}: needs (name, lib), a return type and an argument-type tuple")
            continue
        ret, types = parts[1], parts[2]
        if not (types.startswith("(") and types.endswith(")")):
            errors.append(f"{where}: argument types must be a literal tuple, got {types}")
            continue
        jargs = split_top(types[1:-1])
        values = parts[3:]
        cret, cargs = functions[name]
        if ret.startswith("Ref{"):
            errors.append(f"{where}: a ccall cannot return Ref; use Ptr")
        compatible(ret, cret, set(jstructs), f"{where} return", errors)
        if len(jargs) != len(cargs):
            errors.append(f"{where}: {len(jargs)} argument types, the C function has {len(cargs)}")
        elif len(values) != len(jargs):
            errors.append(f"{where}: {len(values)} values passed for {len(jargs)} argument types")
        else:
            for i, (jt, ct) in enumerate(zip(jargs, cargs)):
                compatible(jt, ct, set(jstructs), f"{where} argument {i + 1}", errors)
        seen.add(name)
        checked += 1

    missing = sorted(REQUIRED - seen)
    if missing:
        errors.append(f"the recipe lacks these functions of the C contract: {', '.join(missing)}")
    unknown_required = sorted(REQUIRED - set(functions))
    if unknown_required:
        errors.append(f"the header no longer declares: {', '.join(unknown_required)}")
    if errors:
        print(f"check-julia: {doc} disagrees with {header}:", file=sys.stderr)
        for err in errors:
            print(f"  {err}", file=sys.stderr)
        return 1
    others = sorted(set(functions) - seen - NOT_FOR_JULIA)
    checked_structs = sorted(set(jstructs) & set(cstructs))
    print(
        f"check-julia: {checked} ccalls over {len(seen)} functions and structs "
        f"{', '.join(checked_structs) or '(none)'} match {header}"
    )
    if others:
        print(f"check-julia: note: not in the Julia recipe: {', '.join(others)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
