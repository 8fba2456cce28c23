"""What an upstream's failure message says: the Python exception pyarrow reported, its
text, traceback and errno, taken apart for ``_errors.upstream_error``."""

from __future__ import annotations

import builtins
import re
import sys
from typing import Optional

# pyarrow (arrow/python/common.cc, ConvertPyError) renders a Python exception in a stream
# callback as "<status code>: <str(exc)>. Detail: Python exception: <traceback>", where
# the traceback is Python's own format, ending in "<type>: <str(exc)>", for example
#   "Unknown error: r-msg. Detail: Python exception: Traceback (most recent call last):
#    \n  File ..., in gen\n    raise e\nRuntimeError: r-msg\n"
# and batchcorder prefixes it with "upstream stream failed: ".
_DETAIL = ". Detail: Python exception: "
# The status code pyarrow picks for each Python exception, and the built-ins it picks it
# for (Unknown error is everything else).
_ARROW_CODES: dict[str, tuple[type[BaseException], ...]] = {
    "Invalid": (ValueError, OverflowError),
    "Type error": (TypeError,),
    "Key error": (KeyError,),
    "Index error": (IndexError,),
    "IOError": (OSError,),
    "Out of memory": (MemoryError,),
    "NotImplemented": (NotImplementedError,),
    "Unknown error": (),
}
_CODE_AT_END = re.compile(r"(?:^|(?<=: ))(" + "|".join(map(re.escape, _ARROW_CODES)) + r"): \Z")
_CODE_ANYWHERE = re.compile(r"(?:^|(?<=: ))(" + "|".join(map(re.escape, _ARROW_CODES)) + r"): ")
_CHAINED = re.compile(
    r"\n\n(?:The above exception was the direct cause of the following exception:"
    r"|During handling of the above exception, another exception occurred:)\n\n"
)
_TYPE_LINE = re.compile(r"([A-Za-z_][\w.<>]*)(?:: (.*))?\Z", re.DOTALL)
ERRNO = re.compile(r"\[[Ee]rrno (\d+)\]")


class Report:
    """An upstream's failure message, taken apart."""

    def __init__(self, message: str) -> None:
        self.message = message  # shown to the user: without the traceback
        self.traceback: Optional[str] = None
        self.type_name: Optional[str] = None  # as the traceback names it
        self.text: Optional[str] = None  # str() of the upstream's exception
        self.code: Optional[str] = None  # pyarrow's status code
        head, found, traceback = message.partition(_DETAIL)
        if not found:
            return
        self.message = head
        self.traceback = traceback
        self._find_exception(traceback)
        if self.text is not None and head.endswith(self.text):
            before = head[: len(head) - len(self.text)]
            at_end = _CODE_AT_END.search(before)
            if at_end is not None and self.type_name is not None:
                self.code = at_end.group(1)
                # "Unknown error: r-msg" says less than "RuntimeError: r-msg".
                shown = self.type_name + (": " + self.text if self.text else "")
                self.message = before[: at_end.start()] + shown
                return
        anywhere = _CODE_ANYWHERE.search(head)
        if anywhere is not None:
            self.code = anywhere.group(1)

    def _find_exception(self, traceback: str) -> None:
        # The last exception of a chain is the one raised; its line is the first in its
        # section not indented, after "Traceback (most recent call last):".
        lines = _CHAINED.split(traceback)[-1].rstrip("\n").split("\n")
        for at, line in enumerate(lines):
            if not line or line[0].isspace() or line.startswith("Traceback (most recent call last)"):
                continue
            matched = _TYPE_LINE.match("\n".join([line, *lines[at + 1 :]]))
            if matched is not None:
                self.type_name = matched.group(1)
                self.text = matched.group(2) or ""
            return

    def builtin(self) -> Optional[type[BaseException]]:
        """The most specific built-in exception the upstream's is, if it can be told."""
        resolved = _resolve(self.type_name) if self.type_name else None
        family = _ARROW_CODES.get(self.code or "", ())
        if resolved is not None:
            found = builtins_of(resolved)[0]
            # pyarrow picked its status code with isinstance: trust the name only if it
            # agrees (it names a class of this process, which could be another one).
            if not family or issubclass(found, family):
                return found
        return family[0] if family else None


def _resolve(name: str) -> Optional[type[BaseException]]:
    """The exception class a traceback names, if this process has it loaded: a built-in,
    a class of ``__main__``, or ``module.Class`` of an imported module. Nothing is
    imported."""
    parts = name.split(".")
    if len(parts) == 1:
        places = [(builtins, parts), (sys.modules.get("__main__"), parts)]
    else:
        places = [
            (sys.modules.get(".".join(parts[:split])), parts[split:])
            for split in range(len(parts) - 1, 0, -1)
        ]
    for place, path in places:
        found: object = place
        try:
            for attr in path:
                found = getattr(found, attr, None)
        except Exception:  # a module's __getattr__ may do anything
            continue
        if found is not None and isinstance(found, type) and issubclass(found, BaseException):
            return found
    return None


def builtins_of(cls: type[BaseException]) -> list[type[BaseException]]:
    """The built-in exception classes in ``cls``'s MRO, most specific first."""
    return [
        base
        for base in cls.__mro__
        if isinstance(base, type)
        and issubclass(base, BaseException)
        and base.__module__ == "builtins"
    ]


def traceback_note(traceback: str) -> str:
    header = "Traceback (most recent call last):\n"
    if traceback.startswith(header):
        traceback = traceback[len(header) :]
    return "Upstream traceback (most recent call last):\n" + traceback.rstrip("\n")


def system_exit_code(text: str) -> object:
    """The exit code a ``SystemExit`` had, from its ``str()``."""
    if text in ("", "None"):
        return None
    try:
        return int(text)
    except ValueError:
        return text
