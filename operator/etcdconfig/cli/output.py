"""kubectl-style output: tables (rich), ``-o wide``, or ``-o json|yaml|name|jsonpath=…``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from etcdconfig.cli import jsonpath

# like kubectl, never truncate or wrap columns when the output is not a terminal
console = Console(width=None if sys.stdout.isatty() else 100_000)
err_console = Console(stderr=True)

EXIT_ERROR, EXIT_USAGE, EXIT_INTEGRITY, EXIT_NOT_FOUND = 1, 2, 3, 4

FORMATS = ("table", "wide", "json", "yaml", "name", "jsonpath=TEMPLATE")


class Exit(Exception):
    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code


def output_format(value: str) -> str:
    """argparse ``type`` of ``-o``: one of FORMATS (a bad template is a usage error)."""
    if value in ("table", "wide", "json", "yaml", "name"):
        return value
    if value.startswith("jsonpath="):
        template = value[len("jsonpath=") :]
        if len(template) >= 2 and template[0] == template[-1] and template[0] in "'\"":
            template = template[1:-1]
        if not template:
            raise argparse.ArgumentTypeError("jsonpath= needs a template, e.g. jsonpath={.config}")
        try:
            jsonpath.validate(template)
        except jsonpath.JsonPathError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return "jsonpath=" + template
    raise argparse.ArgumentTypeError(
        f"invalid output format {value!r} (choose from {', '.join(FORMATS)})"
    )


def structured(fmt: str) -> bool:
    """Whether ``fmt`` prints the document (json, yaml, jsonpath) rather than text."""
    return fmt in ("json", "yaml") or fmt.startswith("jsonpath=")


def emit(
    obj: Any,
    fmt: str,
    table: Table | None = None,
    *,
    names: list[str] | None = None,
    command: str = "this command",
) -> None:
    """Print ``obj`` as ``fmt``. ``table`` serves table and wide (the caller builds the
    wide one); ``names`` serves ``-o name`` (one per line); a command without them
    prints YAML for table/wide and refuses ``-o name`` with a usage error."""
    if fmt == "json":
        sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")
    elif fmt == "yaml":
        sys.stdout.write(yaml.safe_dump(obj, sort_keys=False, allow_unicode=True))
    elif fmt.startswith("jsonpath="):
        try:
            text = jsonpath.render(fmt[len("jsonpath=") :], obj)
        except jsonpath.JsonPathError as exc:
            raise Exit(EXIT_ERROR, f"jsonpath: {exc}") from None
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    elif fmt == "name":
        if names is None:
            raise Exit(EXIT_USAGE, f"-o name is not supported by {command}")
        sys.stdout.writelines(f"{n}\n" for n in names)
    elif table is not None:
        console.print(table)
    else:
        sys.stdout.write(yaml.safe_dump(obj, sort_keys=False, allow_unicode=True))


def table(*columns: str) -> Table:
    t = Table(box=None, pad_edge=False, header_style="bold")
    for c in columns:
        t.add_column(c)
    return t
