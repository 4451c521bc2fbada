"""``${VAR}`` in a job's ``cmd``, replaced by values quoted for where they land.

A value (an input or output path, an argument, ``DS_PROJECT_HOME``) must reach the command as
the one word it is, whatever it holds: spaces, quotes, ``$(...)``, backticks, ``;``. So ``cmd``
is read as bash reads it and each ``${VAR}`` is quoted for its place:

=====================  ===================================================================
where                  the value becomes
=====================  ===================================================================
plain (a word)         in single quotes, each ``'`` as ``'\\''``: ``'it'\\''s here'``
``"..."``              ``\\``, ``"``, ``$`` and backquote escaped with a backslash
``'...'``              each ``'`` as ``'\\''`` (close, escaped quote, reopen)
``$'...'``             ``\\`` and ``'`` escaped with a backslash
backquotes             quoted for the command inside, then escaped for the backquotes
here-document          as in ``"..."`` (``<<'EOF'``: as it is); a value with a newline
                       there is refused, since it could end the document
comment                as a plain word, with newlines as spaces
=====================  ===================================================================

``$(...)`` and ``(...)`` nest (``case`` patterns' ``)`` included). A value made only of
characters no shell interprets (letters, digits, ``_@%+:,./-``) is put in as it is, in every
place: a plain command stays plain and is still executed without a shell
(``executors.local.direct_argv``); any quoted value makes it a shell command. A ``${VAR}``
escaped with a backslash (``\\${VAR}``) stays literal, as bash would print it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from jupyter_ds_jobs.common.contract import CMD_VAR_RE
from jupyter_ds_jobs.common.errors import FailedPrecondition

__all__ = ["substitute"]

#: Characters that mean nothing to a shell in any place (``shlex.quote``'s safe set, less '=').
_VERBATIM = re.compile(r"[A-Za-z0-9_@%+:,./-]+\Z")
#: Where an unquoted '#' starts a comment: after these (or at the start).
_WORD_BREAK = " \t\n;&|()<>"
_HEREDOC = re.compile(r"<<(-?)[ \t]*")
_DELIM_END = set(" \t\n;&|()<>")


def substitute(cmd: str, values: dict[str, str]) -> str:
    """``cmd`` with each ``${VAR}`` of ``values`` replaced by its value, quoted for its place.

    Raises ``FailedPrecondition`` naming the variable for a value that cannot be placed safely
    (a newline inside a here-document).
    """
    return _Scanner(cmd, values).run()


def _word(value: str) -> str:
    """``value`` as one shell word: as it is when nothing in it is special, else single-quoted
    (at most 4 characters per ``'``, 2 quotes around it: ``validation`` counts on that bound)."""
    return value if _VERBATIM.match(value) else "'" + value.replace("'", "'\\''") + "'"


def _escape(value: str, chars: str) -> str:
    """``value`` with a backslash before each of ``chars``."""
    return re.sub(f"([{re.escape(chars)}])", r"\\\1", value)


class _Scanner:
    def __init__(self, cmd: str, values: dict[str, str]) -> None:
        self.s = cmd
        self.i = 0
        self.values = values
        self.out: list[str] = []
        self.heredocs: list[tuple[str, bool, bool]] = []  # (delimiter, quoted, strip tabs)

    def run(self) -> str:
        while self.i < len(self.s):
            self.command(None)
            if self.i < len(self.s):  # a ')' that closes nothing: let bash report it
                self.emit(self.s[self.i])
        return "".join(self.out)

    # -- helpers ---------------------------------------------------------------
    def emit(self, text: str, skip: int | None = None) -> None:
        self.out.append(text)
        self.i += len(text) if skip is None else skip

    def var(self) -> tuple[str, str] | None:
        """(name, value) of a known ``${VAR}`` at the cursor, which moves past it."""
        m = CMD_VAR_RE.match(self.s, self.i)
        if m is None or m.group(1) not in self.values:
            return None
        self.i = m.end()
        return m.group(1), self.values[m.group(1)]

    def at_word_start(self) -> bool:
        last = next((t[-1] for t in reversed(self.out) if t), "")
        return not last or last in _WORD_BREAK

    # -- contexts ----------------------------------------------------------------
    def command(self, closer: str | None) -> None:
        """Plain shell words until ``closer`` (')' of '$(' or '('; None: the end)."""
        cases = 0
        while self.i < len(self.s):
            s, i = self.s, self.i
            c = s[i]
            if (v := self.var()) is not None:
                self.out.append(_word(v[1]))
            elif c == "\\":
                self.emit(s[i : i + 2])
            elif c == "'":
                self.quoted(1, "'", lambda v: v.replace("'", "'\\''"))
            elif s.startswith("$'", i):
                self.quoted(2, "'", lambda v: _escape(v, "\\'"))
            elif c == '"':
                self.double(closer='"')
            elif c == "`":
                self.backquotes()
            elif s.startswith("$(", i) or c == "(":
                self.emit(s[i : i + 1 + (c == "$")])
                self.command(")")
            elif c == ")" and closer == ")" and not cases:
                self.emit(")")
                return
            elif c == "#" and self.at_word_start():
                self.comment()
            elif s.startswith("<<<", i):
                self.emit("<<<")
            elif (m := _HEREDOC.match(s, i)) is not None:
                self.emit(m.group(0))
                self.heredoc_word(bool(m.group(1)))
            elif c == "\n":
                self.emit("\n")
                self.heredoc_bodies()
            else:
                if self.at_word_start() and (m := re.match(r"(case|esac)(?=[\s;&|)]|\Z)", s[i:])):
                    cases += 1 if m.group(1) == "case" else -1 if cases else 0
                    self.emit(m.group(1))
                else:
                    self.emit(c)

    def quoted(self, opener: int, closer: str, quote: Callable[[str], str]) -> None:
        """``'...'`` or ``$'...'``: nothing inside is expanded."""
        self.emit(self.s[self.i : self.i + opener])
        while self.i < len(self.s):
            if (v := self.var()) is not None:
                self.out.append(v[1] if _VERBATIM.match(v[1]) else quote(v[1]))
            elif opener == 2 and self.s[self.i] == "\\":
                self.emit(self.s[self.i : self.i + 2])
            elif self.s[self.i] == closer:
                self.emit(closer)
                return
            else:
                self.emit(self.s[self.i])

    def double(self, closer: str, end_line: bool = False, literal: bool = False) -> None:
        """``"..."``, or (``closer`` '', ``end_line``) one line of a here-document's body."""
        if closer:
            self.emit(closer)
        while self.i < len(self.s):
            s, i = self.s, self.i
            if (v := self.var()) is not None:
                if closer == "" and "\n" in v[1]:
                    raise FailedPrecondition(
                        f"${{{v[0]}}} is used in a here-document of cmd and its value "
                        f"{v[1][:200]!r} has a newline, which could end the document"
                    )
                special = '\\"$`' if closer else "\\$`"  # a here-document keeps '"'
                self.out.append(v[1] if literal or _VERBATIM.match(v[1]) else _escape(v[1], special))
            elif literal:
                self.emit(s[i])
                if end_line and s[i] == "\n":
                    return
            elif s[i] == "\\":
                self.emit(s[i : i + 2])
            elif closer and s[i] == closer:
                self.emit(closer)
                return
            elif s[i] == "`":
                self.backquotes(in_double=bool(closer))
            elif s.startswith("$(", i):
                self.emit("$(")
                self.command(")")
            else:
                self.emit(s[i])
                if end_line and s[i] == "\n":
                    return

    def backquotes(self, in_double: bool = False) -> None:
        """```...```: the command inside, substituted on its own, escaped back for the quotes
        (bash unescapes ``\\\\``, ``\\$``, backquotes and, within ``"..."``, ``\\"`` first)."""
        s, j = self.s, self.i + 1
        while j < len(s) and s[j] != "`":
            j += 2 if s[j] == "\\" else 1
        special = '\\$`"' if in_double else "\\$`"
        raw = re.sub(f"\\\\([{re.escape(special)}])", r"\1", s[self.i + 1 : j])
        inner = _Scanner(raw, self.values).run()
        self.out.append("`" + _escape(inner, special) + ("`" if j < len(s) else ""))
        self.i = min(j + 1, len(s))

    def comment(self) -> None:
        end = self.s.find("\n", self.i)
        end = len(self.s) if end < 0 else end
        while self.i < end:
            if (v := self.var()) is not None:
                self.out.append(_word(v[1].replace("\n", " ")))
            else:
                self.emit(self.s[self.i])

    def heredoc_word(self, strip_tabs: bool) -> None:
        """The delimiter after ``<<``: kept as written; quoted (any quote or backslash) means a
        literal body."""
        j = self.i
        while j < len(self.s) and self.s[j] not in _DELIM_END:
            j += 1
        word = self.s[self.i : j]
        self.emit(word)
        quoted = any(q in word for q in "'\"\\")
        self.heredocs.append((re.sub(r"[\"'\\]", "", word), quoted, strip_tabs))

    def heredoc_bodies(self) -> None:
        """The bodies of the here-documents started on the line that just ended."""
        pending, self.heredocs = self.heredocs, []
        for delim, literal, strip_tabs in pending:
            while self.i < len(self.s):
                end = self.s.find("\n", self.i)
                line = self.s[self.i : len(self.s) if end < 0 else end]
                if (line.lstrip("\t") if strip_tabs else line) == delim:
                    self.emit(line + ("\n" if end >= 0 else ""))
                    break
                self.double("", end_line=True, literal=literal)
