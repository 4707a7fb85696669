"""kubectl-style output: tables (rich) or ``-o json|yaml``."""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

# like kubectl, never truncate or wrap columns when the output is not a terminal
console = Console(width=None if sys.stdout.isatty() else 100_000)
err_console = Console(stderr=True)


def emit(obj: Any, fmt: str, table: Table | None = None) -> None:
    if fmt == "json":
        sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")
    elif fmt == "yaml":
        sys.stdout.write(yaml.safe_dump(obj, sort_keys=False, allow_unicode=True))
    elif table is not None:
        console.print(table)
    else:
        sys.stdout.write(yaml.safe_dump(obj, sort_keys=False, allow_unicode=True))


def table(*columns: str) -> Table:
    t = Table(box=None, pad_edge=False, header_style="bold")
    for c in columns:
        t.add_column(c)
    return t
