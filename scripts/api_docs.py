#!/usr/bin/env python3
"""Writes docs/api.md, the API reference, from the comments of the public
protos (proto/sidecar/v1/*.proto): every service and its RPCs, every
message with its fields, every enum with its values, each with the comment
above it in the .proto file.

usage: scripts/api_docs.py [--check]
  --check: write nothing; exit 1 naming the first difference when
           docs/api.md is not what the protos give (tests/client_docs.rs
           runs this, so the reference cannot rot).

Standard library only: the .proto files are parsed here (proto3 as this
project writes it: one statement a line or several, `//` comments).
"""
from __future__ import annotations

import difflib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto" / "sidecar" / "v1"
OUT = ROOT / "docs" / "api.md"
# The order a reader wants; files not named here follow, sorted.
ORDER = ["common", "text", "vision", "lite", "model", "shm", "admin"]
SCALARS = {"double", "float", "int32", "int64", "uint32", "uint64", "sint32", "sint64", "fixed32",
           "fixed64", "sfixed32", "sfixed64", "bool", "string", "bytes"}


@dataclass
class Field:
    name: str
    number: int
    type: str
    label: str
    doc: str


@dataclass
class Rpc:
    name: str
    request: str
    response: str
    doc: str


@dataclass
class Block:
    kind: str  # service, message, enum, oneof
    name: str
    doc: str
    parent: Optional["Block"] = None
    fields: List[Field] = field(default_factory=list)
    rpcs: List[Rpc] = field(default_factory=list)
    children: List["Block"] = field(default_factory=list)

    def full(self) -> str:
        names, b = [], self
        while b is not None and b.kind != "file":
            if b.kind != "oneof":
                names.append(b.name)
            b = b.parent
        return ".".join(reversed(names))


@dataclass
class ProtoFile:
    name: str
    doc: str
    blocks: List[Block] = field(default_factory=list)


def uncomment(line: str) -> str:
    """A `//` line's text, its indentation past the first space kept."""
    text = line[2:]
    return (text[1:] if text.startswith(" ") else text).rstrip()


def statements(text: str):
    """(leading comment, statement, trailing comment) for every statement:
    text up to `;`, `{` or `}`. A blank line ends a comment block that no
    statement follows."""
    comment: List[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        code, _, trail = line.partition("//")
        code = code.strip()
        if not code:
            if line.startswith("//"):
                comment.append(uncomment(line))
            elif not line and not pending:
                comment = []
            continue
        pending = (pending + " " + code).strip()
        while pending:
            m = re.search(r"[;{}]", pending)
            if not m:
                break
            stmt, pending = pending[: m.end()].strip(), pending[m.end():].strip()
            yield "\n".join(comment).strip(), stmt, trail.strip()
            comment = []
            trail = ""


def parse(path: Path) -> ProtoFile:
    text = path.read_text()
    head = []
    for line in text.splitlines():
        if line.startswith("//"):
            head.append(uncomment(line))
        elif line.strip():
            break
    pf = ProtoFile(name=path.name, doc="\n".join(head).strip())
    top = Block("file", path.name, "")
    stack = [top]
    for doc, stmt, trail in statements(text):
        doc = doc or trail
        cur = stack[-1]
        if stmt == "}":
            if len(stack) == 1:
                raise SystemExit(f"{path}: unbalanced '}}'")
            stack.pop()
            continue
        m = re.match(r"(service|message|enum|oneof)\s+(\w+)\s*\{$", stmt)
        if m:
            b = Block(m.group(1), m.group(2), doc, parent=cur)
            if cur is top:
                pf.blocks.append(b)
            elif m.group(1) == "oneof":
                cur.children.append(b)
            else:
                cur.children.append(b)
            stack.append(b)
            continue
        if stmt.endswith("{"):
            stack.append(Block("other", stmt, "", parent=cur))  # e.g. an option block
            continue
        if re.match(r"(syntax|package|import|option|reserved|extensions)\b", stmt):
            continue
        m = re.match(r"rpc\s+(\w+)\s*\(\s*(stream\s+)?([\w.]+)\s*\)\s*returns\s*\(\s*(stream\s+)?([\w.]+)\s*\)\s*;$", stmt)
        if m and cur.kind == "service":
            req = ("stream " if m.group(2) else "") + m.group(3)
            resp = ("stream " if m.group(4) else "") + m.group(5)
            cur.rpcs.append(Rpc(m.group(1), req, resp, doc))
            continue
        if cur.kind == "enum":
            m = re.match(r"(\w+)\s*=\s*(-?\d+)\s*(\[.*\])?\s*;$", stmt)
            if m:
                cur.fields.append(Field(m.group(1), int(m.group(2)), "", "", doc))
                continue
        m = re.match(r"(repeated\s+|optional\s+)?(map\s*<\s*[\w.]+\s*,\s*[\w.]+\s*>|[\w.]+)\s+(\w+)\s*=\s*(\d+)\s*(\[.*\])?\s*;$", stmt)
        if m and cur.kind in ("message", "oneof"):
            label = (m.group(1) or "").strip()
            if cur.kind == "oneof":
                label = f"oneof {cur.name}"
            owner = cur if cur.kind == "message" else cur.parent
            owner.fields.append(Field(m.group(3), int(m.group(4)), re.sub(r"\s+", "", m.group(2)), label, doc))
            continue
        if cur.kind == "other":
            continue
        raise SystemExit(f"{path}: cannot read statement {stmt!r}")
    if len(stack) != 1:
        raise SystemExit(f"{path}: unclosed block {stack[-1].name}")
    return pf


def cell(doc: str) -> str:
    return " ".join(doc.split()).replace("|", "\\|") or "—"


def anchor(full: str) -> str:
    return "sidecar.v1." + full


def type_link(t: str, known: set) -> str:
    stream = t.startswith("stream ")
    base = t[len("stream "):] if stream else t
    short = base[len("sidecar.v1."):] if base.startswith("sidecar.v1.") else base
    shown = f"[{short}](#{anchor(short)})" if short in known else f"`{base}`"
    return ("stream " if stream else "") + shown


def all_blocks(blocks: List[Block]):
    for b in blocks:
        if b.kind in ("message", "enum", "service"):
            yield b
        yield from all_blocks(b.children)


def render(files: List[ProtoFile]) -> str:
    known = {b.full() for f in files for b in all_blocks(f.blocks) if b.kind != "service"}
    out = [
        "# API reference: `sidecar.v1`",
        "",
        "<!-- Generated by scripts/api_docs.py from proto/sidecar/v1/*.proto: do not edit.",
        "     After changing a .proto, run `python3 scripts/api_docs.py`; tests/client_docs.rs",
        "     fails while this file is out of date. -->",
        "",
        "Every service, message and enum of the public API, with the comments of",
        "the `.proto` files. Client examples for each pattern (Python and Rust):",
        "[`examples/clients/`](../examples/clients/README.md). The Open Inference",
        "Protocol (`inference.GRPCInferenceService`) is Triton's; see the README.",
        "",
        "## Services",
        "",
    ]
    for f in files:
        for b in f.blocks:
            if b.kind == "service":
                first = b.doc.split("\n\n")[0]
                out.append(f"- [{b.name}](#{anchor(b.name)}) (`{f.name}`): {cell(first)}")
    out.append("")
    for f in files:
        out += [f"## {f.name}", ""]
        if f.doc:
            out += [f.doc, ""]
        for b in all_blocks(f.blocks):
            full = b.full()
            out += [f'<a id="{anchor(full)}"></a>', "", f"### {b.kind} {full}", ""]
            if b.doc:
                out += [b.doc, ""]
            if b.kind == "service":
                out += ["| method | request | response | description |", "| --- | --- | --- | --- |"]
                for r in b.rpcs:
                    out.append(f"| `{r.name}` | {type_link(r.request, known)} | {type_link(r.response, known)} | {cell(r.doc)} |")
            elif b.kind == "enum":
                out += ["| value | number | description |", "| --- | --- | --- |"]
                for v in b.fields:
                    out.append(f"| `{v.name}` | {v.number} | {cell(v.doc)} |")
            elif b.fields:
                out += ["| field | number | type | label | description |", "| --- | --- | --- | --- | --- |"]
                for x in b.fields:
                    t = f"`{x.type}`" if x.type in SCALARS or x.type.startswith("map<") else type_link(resolve(x.type, b, known), known)
                    out.append(f"| `{x.name}` | {x.number} | {t} | {x.label} | {cell(x.doc)} |")
            else:
                out.append("No fields.")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def resolve(t: str, scope: Block, known: set) -> str:
    """A field's type as a full name: nested scopes first, as protoc does."""
    if t.startswith("sidecar.v1."):
        return t[len("sidecar.v1."):]
    b = scope
    while b is not None and b.kind != "file":
        prefix = b.full()
        if f"{prefix}.{t}" in known:
            return f"{prefix}.{t}"
        b = b.parent
    return t


def main() -> int:
    check = sys.argv[1:] == ["--check"]
    if sys.argv[1:] not in ([], ["--check"]):
        print(__doc__, file=sys.stderr)
        return 2
    paths = sorted(PROTO.glob("*.proto"), key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else len(ORDER), p.stem))
    if not paths:
        print(f"no .proto files in {PROTO}", file=sys.stderr)
        return 2
    text = render([parse(p) for p in paths])
    if check:
        old = OUT.read_text() if OUT.is_file() else ""
        if old != text:
            diff = list(difflib.unified_diff(old.splitlines(), text.splitlines(), "docs/api.md", "from the protos", lineterm="", n=1))
            print("docs/api.md is out of date with proto/sidecar/v1: run `python3 scripts/api_docs.py`", file=sys.stderr)
            print("\n".join(diff[:40]), file=sys.stderr)
            return 1
        print(f"docs/api.md is current ({len(paths)} files, {text.count(chr(10))} lines)")
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)} ({len(paths)} files, {text.count(chr(10))} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
