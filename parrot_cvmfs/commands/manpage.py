"""The man pages parrot_run.1 and parrot_cvmfs.1, made from the commands' own help
(parrot_run's HELP table, parrot_cvmfs's argparse parsers), so that they cannot say
otherwise than --help. `make man` writes them to man/; a test checks they are current."""

from __future__ import annotations

import argparse
import os

from .._version import __version__

_TERM_COLUMN = 24  # where argparse (and parrot_run's HELP) start an option's text


def _roff(text: str) -> str:
    """Text safe in a roff line: backslashes escaped, a leading control character
    neutralised, dashes as dashes."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def _sections(help_text: str) -> tuple[str, list[str], list[tuple[str, list[str]]]]:
    """(usage, description paragraphs, [(section title, lines)]) of a help text in
    argparse's layout: `title:` at column 0, entries indented below it."""
    lines = help_text.rstrip("\n").split("\n")
    usage = lines[0].removeprefix("usage: ")
    i = 1
    while i < len(lines) and lines[i].startswith(" "):  # a usage wrapped over lines
        usage += " " + lines[i].strip()
        i += 1
    description: list[str] = []
    sections: list[tuple[str, list[str]]] = []
    for raw in lines[i:]:
        if raw and not raw.startswith(" ") and raw.endswith(":"):
            sections.append((raw[:-1], []))
        elif sections:
            sections[-1][1].append(raw)
        elif raw.strip():
            description.append(raw.strip())
    return usage, description, sections


def _entries(lines: list[str]) -> list[tuple[str, str]]:
    """(term, text) pairs: a term at column 2, its text after two spaces or on the
    lines indented to the text column."""
    out: list[tuple[str, str]] = []
    for raw in lines:
        if not raw.strip():
            continue
        indent = len(raw) - len(raw.lstrip())
        if indent >= _TERM_COLUMN - 2 and out:
            term, text = out[-1]
            out[-1] = (term, f"{text} {raw.strip()}".strip())
            continue
        term, _, text = raw.strip().partition("  ")
        out.append((term, text.strip()))
    return out


def _render_sections(sections: list[tuple[str, list[str]]], verbatim=("examples",)) -> list[str]:
    out: list[str] = []
    for title, lines in sections:
        out.append(f".SH {_roff(title.upper())}")
        if title.lower() in verbatim:
            out += [".nf", *(_roff(x.strip()) for x in lines if x.strip()), ".fi"]
            continue
        for term, text in _entries(lines):
            out += [".TP", f"\\fB{_roff(term)}\\fR", _roff(text) if text else ""]
    return [x for x in out if x != ""]


def page(name: str, summary: str, help_text: str, extra: list[str] | None = None) -> str:
    """A man page (section 1) from a help text, `extra` roff lines before its sections."""
    usage, description, sections = _sections(help_text)
    title = name.upper()
    out = [
        f'.TH {title} 1 "" "parrot-cvmfs {__version__}" "User Commands"',
        ".SH NAME",
        f"{_roff(name)} \\- {_roff(summary)}",
        ".SH SYNOPSIS",
        _roff(usage),
        ".SH DESCRIPTION",
        *(_roff(x) for x in description),
        *(extra or []),
        *_render_sections(sections),
    ]
    return "\n".join(out) + "\n"


def _fixed_width(parser: argparse.ArgumentParser) -> str:
    """A parser's help at 80 columns whatever the terminal (argparse asks COLUMNS)."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "80"
    try:
        return parser.format_help()
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:  # argparse has no public walk of its subparsers
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices.items())
    return []


def pages() -> dict[str, str]:
    """{file name: text} of both man pages."""
    from ..cli import build_parser
    from ..tracer.main import help_text

    run_page = page("parrot_run", "run a program with a read-only /cvmfs", help_text())
    parser = build_parser()
    commands: list[str] = [".SH COMMANDS"]
    for name, sub in _subcommands(parser):
        usage, description, sections = _sections(_fixed_width(sub))
        commands += [f".SS {_roff(name)}", _roff(usage), ".PP", *(_roff(x) for x in description)]
        for title, lines in sections:
            commands.append(f".PP\n\\fI{_roff(title)}\\fR")
            for term, text in _entries(lines):
                commands += [".TP", f"\\fB{_roff(term)}\\fR"] + ([_roff(text)] if text else [])
    cli_page = page(
        "parrot_cvmfs",
        "CernVM-FS client tools: inspect, publish and serve repositories",
        _fixed_width(parser),
        commands,
    )
    return {"parrot_run.1": run_page, "parrot_cvmfs.1": cli_page}


def write_pages(directory: str) -> list[str]:
    """Write both pages into `directory`; returns their paths."""
    os.makedirs(directory, exist_ok=True)
    written = []
    for name, text in pages().items():
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        written.append(path)
    return written


if __name__ == "__main__":
    import sys

    for path in write_pages(sys.argv[1] if len(sys.argv) > 1 else "man"):
        print(path)
