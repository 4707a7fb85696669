"""``etcdconfig completion bash|zsh``: completion scripts generated from the parser.

Completes command names, each command's flags and the choices of flags and
positionals that have them (``-o``, ``--dry-run``, ``completion SHELL``); no
dependency beyond argparse. Install: ``source <(etcdconfig completion bash)``, or
for zsh ``source <(etcdconfig completion zsh)`` (after ``compinit``).
"""

from __future__ import annotations

import argparse
import shlex

__all__ = ["script", "words"]

OUTPUT_CHOICES = ("table", "wide", "json", "yaml", "name", "jsonpath=")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def words(parser: argparse.ArgumentParser) -> dict[str, dict[str, list[str]]]:
    """Per command (``""``: before any command): ``flags``, and ``values:FLAG`` /
    ``args`` with the choices to offer."""
    out: dict[str, dict[str, list[str]]] = {}
    commands = _subparsers(parser)
    for name, p in [("", parser), *commands.items()]:
        entry: dict[str, list[str]] = {"flags": [], "args": []}
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                entry["args"] = list(commands)
                continue
            if action.option_strings:
                entry["flags"].extend(o for o in action.option_strings if o.startswith("--"))
                if action.dest == "output":
                    choices: list[str] = list(OUTPUT_CHOICES)
                else:
                    choices = [str(c) for c in action.choices or ()]
                if choices:
                    for o in action.option_strings:
                        entry[f"values:{o}"] = choices
            elif action.choices:
                entry["args"].extend(str(c) for c in action.choices)
        out[name] = entry
    return out


def _bash(table: dict[str, dict[str, list[str]]]) -> str:
    cases: list[str] = []
    for command, entry in table.items():
        values = [
            f"                {shlex.quote(k.split(':', 1)[1])}) "
            f'COMPREPLY=($(compgen -W {shlex.quote(" ".join(v))} -- "$cur")); return;;'
            for k, v in entry.items()
            if k.startswith("values:")
        ]
        label = shlex.quote(command) if command else "''"
        cases.append(
            f"        {label})\n"
            '            case "$prev" in\n'
            + "".join(v + "\n" for v in values)
            + "            esac\n"
            f"            flags={shlex.quote(' '.join(entry['flags']))}\n"
            f"            args={shlex.quote(' '.join(entry['args']))};;"
        )
    return (
        "# bash completion for etcdconfig (etcdconfig completion bash)\n"
        "_etcdconfig() {\n"
        "    local cur prev cmd='' i flags args\n"
        '    cur="${COMP_WORDS[COMP_CWORD]}"\n'
        '    prev="${COMP_WORDS[COMP_CWORD-1]}"\n'
        "    for ((i = 1; i < COMP_CWORD; i++)); do\n"
        '        case "${COMP_WORDS[i]}" in\n'
        "            -*) ;;\n"
        '            *) if [[ -z "$cmd" && " '
        + " ".join(table[""]["args"])
        + ' " == *" ${COMP_WORDS[i]} "* ]]; then cmd="${COMP_WORDS[i]}"; fi;;\n'
        "        esac\n"
        "    done\n"
        '    case "$cmd" in\n' + "\n".join(cases) + "\n"
        "        *) return;;\n"
        "    esac\n"
        '    if [[ "$cur" == -* ]]; then\n'
        '        COMPREPLY=($(compgen -W "$flags" -- "$cur"))\n'
        "    else\n"
        '        COMPREPLY=($(compgen -W "$args" -- "$cur"))\n'
        "    fi\n"
        "}\n"
        "complete -o default -F _etcdconfig etcdconfig kubectl-etcdconfig\n"
    )


def _zsh(table: dict[str, dict[str, list[str]]]) -> str:
    # zsh runs bash completion functions through bashcompinit
    return (
        "#compdef etcdconfig kubectl-etcdconfig\n"
        "# zsh completion for etcdconfig (etcdconfig completion zsh)\n"
        "autoload -U +X bashcompinit && bashcompinit\n" + _bash(table)
    )


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    table = words(parser)
    return _zsh(table) if shell == "zsh" else _bash(table)
