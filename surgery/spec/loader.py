"""Reading spec files: prototxt text, YAML or JSON, all through the one schema in
``surgery.proto``. Unknown fields and wrong types are rejected with ``file:line:col``;
every edit and every string in it keeps its position, so errors found later (a layer
name the net does not have) point at the spec line too."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format, text_format

from surgery.errors import SpecError, SurgeryError
from surgery.spec.schema import spec_class
from surgery.untrusted import read_regular, regular_file

TEXT_SUFFIXES = {".prototxt", ".pbtxt", ".txt", ".spec"}
YAML_SUFFIXES = {".yaml", ".yml", ".json"}


@dataclass
class Locator:
    """Positions of a spec file's edits and of the strings inside each edit."""

    path: str
    edit_positions: list[tuple[int, int]] = field(default_factory=list)
    strings: list[list[tuple[str, int, int]]] = field(default_factory=list)
    #: The other top-level fields (``source``, ``output``): position and strings inside.
    sections: dict[str, tuple[int, int, list[tuple[str, int, int]]]] = field(default_factory=dict)
    _exact: dict[int, dict[str, tuple[int, int]]] = field(default_factory=dict, repr=False, compare=False)

    def edit(self, index: int) -> str:
        """``file:line:col`` of edit number ``index`` (0-based)."""
        if 0 <= index < len(self.edit_positions):
            line, col = self.edit_positions[index]
            return f"{self.path}:{line}:{col}"
        return f"{self.path}:1:1"

    def find(self, index: int, subject: str | None) -> str:
        """``file:line:col`` of the string ``subject`` inside edit ``index`` (the first
        one equal to it, or containing it), else the edit's own position."""
        if subject is not None and 0 <= index < len(self.strings):
            exact = self._first_of(index).get(subject)
            if exact is not None:
                return f"{self.path}:{exact[0]}:{exact[1]}"
            for value, line, col in self.strings[index]:
                if subject in value:
                    return f"{self.path}:{line}:{col}"
        return self.edit(index)

    def _first_of(self, index: int) -> dict[str, tuple[int, int]]:
        """Each string of edit ``index`` -> where it first stands (built once: a spec
        that appends 10,000 layers asks for every one of them)."""
        table = self._exact.get(index)
        if table is None:
            table = {}
            for value, line, col in self.strings[index]:
                table.setdefault(value, (line, col))
            self._exact[index] = table
        return table

    def section(self, name: str, subject: str | None = None) -> str:
        """``file:line:col`` of ``subject`` inside the top-level field ``name`` (e.g.
        ``output``), else of the field itself, else the file."""
        if name not in self.sections:  # the field is missing: the error is about the whole file
            return f"{self.path}:1:1"
        line, col, strings = self.sections[name]
        if subject is not None:
            for exact in (True, False):
                for value, at_line, at_col in strings:
                    if value == subject if exact else subject in value:
                        return f"{self.path}:{at_line}:{at_col}"
        return f"{self.path}:{line}:{col}"


@dataclass
class LoadedSpec:
    """A parsed spec: the ``surgery.spec.Spec`` message, where it came from, positions."""

    message: Any
    path: Path
    locator: Locator

    @property
    def base_dir(self) -> Path:
        """Relative paths in a spec are relative to the spec file's folder."""
        return self.path.parent

    @contextmanager
    def located(self, where: str | int) -> Iterator[None]:
        """Errors raised in the block that carry no location yet get one in this spec:
        ``where`` is a top-level field (``"source"``, ``"output"``) or an edit's index;
        the error's ``subject`` is looked for inside it."""
        try:
            yield
        except SurgeryError as error:
            if error.location is None:
                locator = self.locator
                error.location = (
                    locator.find(where, error.subject)
                    if isinstance(where, int)
                    else locator.section(where, error.subject)
                )
            raise


# --------------------------------------------------------------------- text format
_TOKEN = re.compile(r'#[^\n]*|"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|[{}<>\[\]:,;]|[^\s{}<>\[\]:,;#"\']+')


_FIELD = re.compile(r"[A-Za-z_]\w*$")


def _text_positions(text: str, path: str) -> Locator:
    """Where each top-level ``edit`` starts and where the strings inside it stand.

    protobuf's text parser does the validation; this only scans tokens (comments and
    quoted strings respected) to remember positions, which the Python API of protobuf
    does not expose."""
    locator = Locator(path)
    depth = 0
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
    current, section = -1, None
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token.startswith("#"):
            continue
        offset = match.start()
        line = _line_of(line_starts, offset)
        col = offset - line_starts[line - 1] + 1
        if token in ("{", "<"):
            depth += 1
        elif token in ("}", ">"):
            depth -= 1
        elif depth == 0 and token == "edit":
            locator.edit_positions.append((line, col))
            locator.strings.append([])
            current, section = len(locator.edit_positions) - 1, None
        elif depth == 0 and _FIELD.match(token):
            current, section = -1, token
            locator.sections.setdefault(token, (line, col, []))
        elif token[0] in "\"'" and depth > 0:
            if current >= 0:
                locator.strings[current].append((_unquote(token), line, col))
            elif section is not None:
                locator.sections[section][2].append((_unquote(token), line, col))
    return locator


#: Top-level fields only a spec has, and only a Caffe NetParameter has.
_SPEC_FIELDS = {"source", "edit", "seed", "output"}
_CAFFE_FIELDS = {"layer", "layers", "input", "input_shape", "input_dim", "force_backward", "state", "debug_info"}


def sniff_text(text: str) -> tuple[str | None, int, int]:
    """What a prototxt is, from its top-level field names (not its file name):
    ``("spec", line, col)``, ``("caffe", line, col)`` (where the first telling field
    stands) or ``(None, 1, 1)`` when no top-level field tells."""
    depth, line = 0, 1
    line_start = 0
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token.startswith("#"):
            continue
        if token in ("{", "<"):
            depth += 1
        elif token in ("}", ">"):
            depth -= 1
        elif depth == 0 and (token in _SPEC_FIELDS or token in _CAFFE_FIELDS):
            line = text.count("\n", 0, match.start()) + 1
            line_start = text.rfind("\n", 0, match.start()) + 1
            return ("spec" if token in _SPEC_FIELDS else "caffe"), line, match.start() - line_start + 1
    return None, 1, 1


def _line_of(line_starts: list[int], offset: int) -> int:
    import bisect

    return bisect.bisect_right(line_starts, offset)


def _unquote(token: str) -> str:
    body = token[1:-1]
    try:
        return body.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError:
        return body


def _parse_text(text: str, path: str) -> tuple[Any, Locator]:
    kind, line, col = sniff_text(text)
    if kind == "caffe":
        raise SpecError(
            "this is a Caffe network definition, not a spec",
            location=f"{path}:{line}:{col}",
            fix=f"list its layers with `surgery inspect {path}`, or edit it with a spec whose "
            f'source is caffe {{ prototxt: "{Path(path).name}" }}',
        )
    message = spec_class("Spec")()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as error:
        line, col = error.GetLine(), error.GetColumn()
        reason = str(error)
        reason = re.sub(r"^\d+:\d+ : ", "", reason)
        where = f"{path}:{line}:{col}" if line else path
        raise SpecError(reason, location=where, fix=_text_fix(reason)) from None
    return message, _text_positions(text, path)


def _text_fix(reason: str) -> str | None:
    found = re.search(r'Message type "([\w.]+)" has no field named "(\w+)"', reason)
    if not found:
        return None
    from surgery.errors import did_you_mean

    descriptor = (
        spec_class(found.group(1).split(".")[-1])().DESCRIPTOR if found.group(1).startswith("surgery.spec.") else None
    )
    if descriptor is None:
        return None
    hint = did_you_mean(found.group(2), [f.name for f in descriptor.fields])
    return hint or f"fields of {descriptor.name}: {', '.join(f.name for f in descriptor.fields)}"


# ------------------------------------------------------------------- YAML / JSON
def _yaml_positions(node: Any, path: str) -> Locator:
    locator = Locator(path)
    if not isinstance(node, yaml.MappingNode):
        return locator
    for key, value in node.value:
        if not isinstance(key, yaml.ScalarNode):
            continue
        if key.value != "edit":
            strings: list[tuple[str, int, int]] = []
            _collect_scalars(value, strings)
            locator.sections[key.value] = (key.start_mark.line + 1, key.start_mark.column + 1, strings)
        else:
            locator.sections["edit"] = (key.start_mark.line + 1, key.start_mark.column + 1, [])
        if key.value == "edit" and isinstance(value, yaml.SequenceNode):
            for item in value.value:
                mark = item.start_mark
                locator.edit_positions.append((mark.line + 1, mark.column + 1))
                found: list[tuple[str, int, int]] = []
                _collect_scalars(item, found)
                locator.strings.append(found)
    return locator


def _collect_scalars(node: Any, out: list[tuple[str, int, int]]) -> None:
    if isinstance(node, yaml.ScalarNode):
        out.append((str(node.value), node.start_mark.line + 1, node.start_mark.column + 1))
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _collect_scalars(item, out)
    elif isinstance(node, yaml.MappingNode):
        for _, value in node.value:
            _collect_scalars(value, out)


#: A spec is a page of text: these bound what a hostile file can make the parser do.
MAX_NESTING = 64
MAX_YAML_NODES = 100_000


def _yaml_error(error: yaml.YAMLError, text: str, path: str) -> SpecError:
    """The YAML error at its real line:col (a reader error only knows its offset)."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    if mark is not None:
        line, col = mark.line + 1, mark.column + 1
    else:
        offset = getattr(error, "position", 0) or 0
        line = text.count("\n", 0, offset) + 1
        col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    problem = getattr(error, "problem", None) or getattr(error, "reason", None) or str(error)
    if isinstance(error, yaml.reader.ReaderError):
        problem = f"character {error.character!r} is not allowed in YAML ({error.reason})"
    return SpecError(
        f"not valid YAML/JSON: {problem}",
        location=f"{path}:{line}:{col}",
        fix="remove the character" if isinstance(error, yaml.reader.ReaderError) else None,
    )


def _check_flow_nesting(text: str, path: str) -> None:
    """Refuse ``[[[[...`` / ``{{{{...`` deeper than any spec needs before the (recursive)
    YAML parser sees it."""
    depth, line, col = 0, 1, 0
    quote = None
    for char in text:
        col += 1
        if char == "\n":
            line, col, quote = line + 1, 0, None
        elif quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
            if depth > MAX_NESTING:
                raise SpecError(
                    f"nested more than {MAX_NESTING} levels deep",
                    location=f"{path}:{line}:{col}",
                    fix="a spec needs a few levels; check the brackets",
                )
        elif char in "]}":
            depth = max(0, depth - 1)
    _check_block_nesting(text, path)


def _check_block_nesting(text: str, path: str) -> None:
    """The same bound for block style: each deeper indentation opens a level."""
    indents: list[int] = []
    for number, line in enumerate(text.split("\n"), 1):
        stripped = line.lstrip(" ")
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(stripped)
        while indents and indents[-1] >= indent:
            indents.pop()
        indents.append(indent)
        if len(indents) > MAX_NESTING:
            raise SpecError(
                f"nested more than {MAX_NESTING} levels deep",
                location=f"{path}:{number}:{indent + 1}",
                fix="a spec needs a few levels; check the indentation",
            )


def _check_node_count(node: Any, path: str) -> None:
    """Count the nodes the document expands to, following aliases without expanding
    them (a 'billion laughs' file is a few lines whose expansion fills memory)."""
    sizes: dict[int, int] = {}

    open_nodes: set[int] = set()  # the nodes being counted: meeting one again is a cycle

    def size(item: Any, depth: int) -> int:
        if id(item) in open_nodes:
            raise SpecError(
                "an alias refers to a node that contains it (a recursive alias): the document never ends",
                location=f"{path}:{item.start_mark.line + 1}:{item.start_mark.column + 1}",
                fix="write the value out instead of the alias",
            )
        if id(item) in sizes:
            return sizes[id(item)]
        if depth > MAX_NESTING:
            raise SpecError(
                f"nested more than {MAX_NESTING} levels deep",
                location=f"{path}:{item.start_mark.line + 1}:{item.start_mark.column + 1}",
            )
        open_nodes.add(id(item))
        total = 1
        if isinstance(item, yaml.SequenceNode):
            total += sum(size(child, depth + 1) for child in item.value)
        elif isinstance(item, yaml.MappingNode):
            total += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in item.value)
        open_nodes.discard(id(item))
        total = min(total, MAX_YAML_NODES + 1)
        sizes[id(item)] = total
        return total

    if node is not None and size(node, 0) > MAX_YAML_NODES:
        raise SpecError(
            f"the document expands to more than {MAX_YAML_NODES} values (aliases repeat whole subtrees)",
            location=f"{path}:1:1",
            fix="write the spec out without nested aliases",
        )


def _parse_yaml(text: str, path: str) -> tuple[Any, Locator]:
    _check_flow_nesting(text, path)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        _check_node_count(node, path)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise _yaml_error(error, text, path) from None
    except RecursionError:  # block nesting deep enough for the recursive parser
        raise SpecError(f"nested more than {MAX_NESTING} levels deep", location=f"{path}:1:1") from None
    locator = _yaml_positions(node, path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError("a spec is a mapping (source, seed, edit, output)", location=f"{path}:1:1")
    message = spec_class("Spec")()
    edits = data.pop("edit", []) or []
    if not isinstance(edits, list):
        raise SpecError(
            f"`edit` is a list of edits, not a {type(edits).__name__}",
            location=locator.section("edit"),
            fix="write each edit as a list item: `edit:` then `  - lr: {...}` lines",
        )
    for key, value in data.items():  # one key at a time, so an error points at its line
        try:
            json_format.ParseDict({key: value}, message)
        except json_format.ParseError as error:
            raise SpecError(_json_reason(error), location=locator.section(str(key))) from None
    for index, item in enumerate(edits):
        if not isinstance(item, dict) or len(item) != 1:
            raise SpecError(
                f"edit {index + 1} is {_describe(item)}, not one operation with its fields",
                location=locator.edit(index),
                fix=_edit_fix(item),
            )
        try:
            json_format.ParseDict(item, message.edit.add())
        except json_format.ParseError as error:
            raise SpecError(_json_reason(error), location=locator.edit(index)) from None
    return message, locator


def _describe(item: Any) -> str:
    if isinstance(item, dict):
        return f"a mapping of {len(item)} keys ({', '.join(map(str, item)) or 'none'})"
    return "empty (null)" if item is None else f"the {type(item).__name__} {item!r}"


def _edit_fix(item: Any) -> str:
    operations = sorted(f.name for f in spec_class("Edit")().DESCRIPTOR.fields)
    if isinstance(item, str) and item in operations:
        return f"give {item} its fields: `- {item}: {{...}}`"
    return f"write `- OPERATION: {{fields}}`, one operation per item ({', '.join(operations)})"


def _json_reason(error: Exception) -> str:
    return str(error).replace("Message type ", "").strip()


# ----------------------------------------------------------------------- entry
#: Larger files are not specs (a model named by mistake): refused before parsing.
MAX_SPEC_BYTES = 1 << 20


def decode_text(raw: bytes, path: str, error_class: type = SpecError) -> str:
    """``raw`` as UTF-8 text; a byte that is not UTF-8 (or a NUL: a binary file) is an
    ``error_class`` at its line:col."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        offset = error.start
        problem = f"byte 0x{raw[offset]:02x} is not UTF-8 text"
    else:
        offset = text.find("\0")
        if offset < 0:
            return text
        problem = "a NUL character: this is a binary file, not text"
        raw = text.encode()  # offsets below count characters either way for the prefix
        offset = len(text[:offset].encode())
    line = raw.count(b"\n", 0, offset) + 1
    col = len(raw[raw.rfind(b"\n", 0, offset) + 1 : offset].decode("utf-8", "replace")) + 1
    raise error_class(problem, location=f"{path}:{line}:{col}", fix="save the file as UTF-8 text")


def parse_spec(text: str, path: str = "<spec>", fmt: str = "prototxt") -> LoadedSpec:
    """Parse spec ``text`` (``fmt`` is ``prototxt``, ``yaml`` or ``json``)."""
    if fmt == "prototxt":
        message, locator = _parse_text(text, path)
    else:
        message, locator = _parse_yaml(text, path)
    return LoadedSpec(message, Path(path), locator)


def load_spec(path: str | Path) -> LoadedSpec:
    """Read and validate the syntax of a spec file.

    Raises:
        SpecError: the file is missing, unreadable, or not valid against the schema
            (the message carries ``file:line:col``).
    """
    path = Path(path)
    size = regular_file(path, "spec file", SpecError).st_size  # a FIFO or /dev/zero is never opened
    if size > MAX_SPEC_BYTES:
        raise SpecError(
            f"spec file {str(path)!r} has {size} bytes; a spec is text of at most {MAX_SPEC_BYTES}",
            location=f"{path}:1:1",
            fix="is this a model file? name it in the spec's source { }",
        )
    try:
        raw = read_regular(path, "spec file", MAX_SPEC_BYTES, SpecError)
    except OSError as error:
        raise SpecError(f"cannot read spec file {str(path)!r}: {error.strerror or error}") from None
    text = decode_text(raw, str(path), SpecError)
    suffix = path.suffix.lower()
    fmt = "prototxt" if suffix in TEXT_SUFFIXES or suffix not in YAML_SUFFIXES else "yaml"
    loaded = parse_spec(text, str(path), fmt)
    loaded.path = path
    return loaded


def spec_to_dict(message: Any) -> dict[str, Any]:
    """The spec as plain data (for the report)."""
    return json.loads(json_format.MessageToJson(message, preserving_proto_field_name=True))
