"""Dirtab rules (`.cvmfsdirtab`, `cvmfs_preload -d`): which directories get their own
catalog, or which nested catalogs a preload pulls.

Positive rules are absolute paths whose wildcards (`*`, `?`) stay within one
component; negative rules (`! pattern`) may be relative and their `*` spans `/`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigError


def _glob_regex(pattern: str, relaxed: bool) -> re.Pattern:
    out, i = [], 0
    star, one = (".*", ".") if relaxed else ("[^/]*", "[^/]")
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(star if c == "*" else one if c == "?" else re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


@dataclass
class Rule:
    pattern: str
    negative: bool
    implied: bool = False

    def __post_init__(self):
        self.regex = _glob_regex(self.pattern, relaxed=self.negative)

    def matches(self, path: str) -> bool:
        if self.negative and not self.pattern.startswith("/"):
            # a relative negative rule matches the end of the path at a component boundary
            return any(self.regex.match(path[i + 1 :]) for i, c in enumerate(path) if c == "/")
        return bool(self.regex.match(path))


class Dirtab:
    def __init__(self, text: str, source: str = "dirtab"):
        self.rules: list[Rule] = []
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.lstrip()
            if not line or line.startswith("#"):
                continue
            negative = line.startswith("!")
            if negative:
                line = line[1:]
            pattern = line.strip()
            if len(pattern) > 1:
                pattern = pattern.rstrip("/")
            if not pattern:
                raise ConfigError(f"{source}:{lineno}: empty rule")
            if not negative and not pattern.startswith("/"):
                raise ConfigError(f"{source}:{lineno}: positive rule {pattern!r} must be absolute")
            self.rules.append(Rule(pattern, negative))
        pos = {r.pattern for r in self.rules if not r.negative}
        neg = {r.pattern for r in self.rules if r.negative}
        if pos & neg:
            raise ConfigError(
                f"{source}: rule {sorted(pos & neg)[0]!r} is both positive and negative"
            )

    @classmethod
    def load(cls, path: str) -> Dirtab:
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                return cls(f.read(), path)
        except OSError as e:
            raise ConfigError(f"cannot read dirtab {path}: {e.strerror}") from None

    @property
    def positive(self) -> list[Rule]:
        return [r for r in self.rules if not r.negative]

    @property
    def negative(self) -> list[Rule]:
        return [r for r in self.rules if r.negative]

    def matches(self, path: str) -> bool:
        """Plain dirtab semantics (server): some positive rule matches and no negative one."""
        return any(r.matches(path) for r in self.positive) and not any(
            r.matches(path) for r in self.negative
        )


class RelaxedPathFilter:
    """Preload semantics: ancestors of positive rules are included (so the catalogs on the
    way are pulled), everything below a positive match is included, and anything at or
    below a negative match is excluded."""

    def __init__(self, dirtab: Dirtab):
        self.dirtab = dirtab
        explicit = dirtab.positive
        implied: list[Rule] = []
        seen = {r.pattern for r in explicit}
        for r in explicit:
            parts = r.pattern.split("/")[1:]
            for i in range(1, len(parts)):
                anc = "/" + "/".join(parts[:i])
                if anc not in seen:
                    seen.add(anc)
                    implied.append(Rule(anc, False, implied=True))
        self.explicit = explicit
        self.implied = implied

    @property
    def rules(self) -> list[Rule]:
        return self.explicit + self.implied + self.dirtab.negative

    def _ancestors(self, path: str) -> list[str]:
        out, p = [], path
        while p:
            out.append(p)
            p = p[: p.rfind("/")]
        return out

    def is_opposing(self, path: str) -> bool:
        return any(r.matches(a) for a in self._ancestors(path) for r in self.dirtab.negative)

    def matches(self, path: str) -> bool:
        if path in ("", "/") or self.is_opposing(path):
            return False
        if any(r.matches(path) for r in self.implied):
            return True
        return any(r.matches(a) for a in self._ancestors(path) for r in self.explicit)


def selection(dirtab_text: bytes, what: str) -> RelaxedPathFilter:
    """The nested catalogs a dirtab selects, with preload's semantics (preload and unbundle alike)."""
    return RelaxedPathFilter(Dirtab(dirtab_text.decode("utf-8", "surrogateescape"), what))
