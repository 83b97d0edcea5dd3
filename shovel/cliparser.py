"""The command line's parser: options in groups, metavars that say what to type, help that
does not break a URL in two, and "did you mean" for a mistyped flag.

pydantic-settings builds the options from the Settings model; this parser only places and
names them (see `place`)."""

from __future__ import annotations

import argparse
import difflib
import re
import shlex
import textwrap
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from pydantic_settings import SettingsError


class HelpFormatter(argparse.HelpFormatter):
    """Wraps at spaces only, so that a URL or a path stays whole on its line; in descriptions,
    keeps paragraphs apart, and a paragraph with an indented line as it is."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(
            " ".join(text.split()), width, break_long_words=False, break_on_hyphens=False
        )

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.split("\n\n"):
            if any(line.startswith(" ") for line in paragraph.splitlines()):
                paragraphs.append(paragraph)
            else:
                lines = self._split_lines(paragraph, width - len(indent))
                paragraphs.append("\n".join(indent + line for line in lines))
        return "\n\n".join(paragraphs)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are SettingsError (the caller words them) and which
    suggests the nearest option for an unknown one."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            add_help=False, allow_abbrev=False, formatter_class=HelpFormatter, **kwargs
        )
        self.groups: dict[str, argparse._ArgumentGroup] = {}

    def group(self, title: str, description: str | None = None) -> argparse._ArgumentGroup:
        """The option group `title`, made on first use (groups print in that order)."""
        if title not in self.groups:
            self.groups[title] = self.add_argument_group(title, description)
        return self.groups[title]

    def flags(self) -> list[str]:
        """Every long option this parser knows."""
        return [s for a in self._actions for s in a.option_strings if s.startswith("--")]

    def error(self, message: str) -> NoReturn:
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            raise SettingsError(self._unknown(message.removeprefix(prefix).split()))
        # argparse's own wording, in shovel's: "argument --a/--no-a: ..." -> "--a: ...".
        match = re.fullmatch(r"argument (-[^/:]+)(?:/[^:]+)?: (.*)", message)
        if match is None:
            raise SettingsError(message)
        flag, said = match.groups()
        if said == "expected one argument":
            said = "needs a value"
        elif said.startswith("ignored explicit argument"):
            said = f"takes no value (say {flag} or {flag.replace('--', '--no-', 1)})"
        raise SettingsError(f"{flag}: {said}")

    def _unknown(self, args: list[str]) -> str:
        options = [a.split("=", 1)[0] for a in args if a.startswith("-") and a != "-"]
        if not options:
            # Only values: shovel takes no positional argument; a lone one is likely a source.
            return (
                f"{args[0]!r}: unexpected argument; did you mean --source {shlex.quote(args[0])}?"
            )
        # The first unknown option is enough: what follows it may be its value.
        near = difflib.get_close_matches(options[0], self.flags(), n=1, cutoff=0.6)
        hint = f"did you mean {near[0]}?" if near else "see --help for the options"
        return f"{options[0]}: no such option; {hint}"


def placer(
    groups: Mapping[str, str], metavars: Mapping[str, str], helps: Callable[[str], str]
) -> Callable[..., Any]:
    """pydantic-settings' add_argument hook: each option goes into the group `groups` names
    for its field, with the metavar `metavars` gives it (or none, for a flag or a choice)
    and the help `helps(field)` writes."""

    def place(parser: Parser, *names: str, **kwargs: Any) -> Any:
        field = str(kwargs.get("dest", ""))
        if field not in groups:
            # -h/--help, and anything else that is not a field.
            return parser.add_argument(*names, **kwargs)
        kwargs["help"] = helps(field)
        if field in metavars:
            kwargs["metavar"] = metavars[field]
        return parser.group(groups[field]).add_argument(*names, **kwargs)

    return place
