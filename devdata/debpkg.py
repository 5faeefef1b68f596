"""Debian packages for the offline data builders: apt-get download + dpkg -x cache, DEP-5 and GCompris licences."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from btembed.errors import BtembedError


class PrepError(BtembedError):
    """A clear, user-facing failure of building the pool or the dev set."""


# --------------------------------------------------------------------------- Debian packages


@dataclass
class Package:
    """One downloaded and unpacked Debian package."""

    name: str
    version: str
    deb: Path
    root: Path

    def copyright_text(self) -> str:
        """The package's copyright file, or '' if it ships none."""
        p = self.root / "usr/share/doc" / self.name / "copyright"
        return p.read_text(encoding="utf-8", errors="replace") if p.exists() else ""


class DebCache:
    """Fetches packages with apt-get into a cache directory and unpacks them with dpkg -x."""

    def __init__(self, cache: Path):
        # absolute: the tools run inside the cache, where a relative path given to them would point elsewhere
        self.cache = Path(cache).resolve()
        self.cache.mkdir(parents=True, exist_ok=True)
        self._done: dict[str, Package] = {}

    def _run(self, cmd: list[str], what: str) -> str:
        """Run a tool, turning a missing binary or a failure into one readable sentence."""
        if shutil.which(cmd[0]) is None:
            raise PrepError(f"`{cmd[0]}` is not available: run this on Debian/Ubuntu, or put the .deb files "
                            f"into {self.cache} yourself")
        res = subprocess.run(cmd, cwd=self.cache, capture_output=True, text=True)
        if res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
            raise PrepError(f"{what} failed ({' '.join(cmd)}): {' | '.join(tail)}"
                            + (" -- try `apt-get update` first" if cmd[0] == "apt-get" else ""))
        return res.stdout

    def get(self, name: str) -> Package:
        """Download (once) and unpack (once) the package called name."""
        if name in self._done:
            return self._done[name]
        debs = sorted(self.cache.glob(f"{name}_*.deb"))
        if not debs:
            self._run(["apt-get", "download", name], f"downloading {name}")
            debs = sorted(self.cache.glob(f"{name}_*.deb"))
            if not debs:
                raise PrepError(f"apt-get download {name} produced no .deb in {self.cache}")
        deb = debs[-1]
        version = self._run(["dpkg-deb", "-f", str(deb), "Version"], f"reading {deb.name}").strip()
        root = self.cache / "unpacked" / f"{name}_{version.replace(':', '%3a')}"
        # The marker makes an interrupted unpack redo itself instead of leaving a half tree.
        if not (root / ".unpacked").exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            self._run(["dpkg", "-x", str(deb), str(root)], f"unpacking {deb.name}")
            (root / ".unpacked").touch()
        pkg = Package(name, version, deb, root)
        self._done[name] = pkg
        return pkg

    def fetched(self) -> list[Package]:
        """The packages got so far, in the order they were first asked for."""
        return list(self._done.values())


# --------------------------------------------------------------------------- licences


@dataclass
class LicenceRule:
    """One Files stanza of a machine-readable copyright file."""

    patterns: list[str]
    licence: str
    copyright: str


def parse_dep5(text: str) -> list[LicenceRule]:
    """Parse the Files stanzas of a DEP-5 copyright file (empty list if it is free-form)."""
    rules = []
    for stanza in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
                continue
            m = re.match(r"([A-Za-z][A-Za-z-]*):\s*(.*)$", line)
            key = m.group(1).lower() if m else None
            if m:
                fields[key] = m.group(2)
        if "files" in fields and "license" in fields:
            rules.append(LicenceRule(
                patterns=fields["files"].split(),
                licence=fields["license"].split("\n")[0].strip(),
                copyright="; ".join(s for s in fields.get("copyright", "").split("\n") if s.strip()),
            ))
    return rules


def lookup_licence(rules: list[LicenceRule], path: str) -> LicenceRule | None:
    """Last matching stanza wins, as DEP-5 specifies; patterns are upstream-relative so allow any prefix."""
    found = by_name = None
    base = path.rsplit("/", 1)[-1]
    for rule in rules:
        if any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(path, "*/" + p) for p in rule.patterns):
            found = rule
        # Upstream folders are sometimes flattened on install (lomiri's 16.04/x.jpg lands in backgrounds/x.jpg).
        if any(not re.search(r"[*?\[]", p) and p.rsplit("/", 1)[-1] == base for p in rule.patterns):
            by_name = rule
    if by_name is not None and (found is None or all(re.search(r"[*?\[]", p) for p in found.patterns)):
        return by_name
    return found


def parse_gcompris_readme(text: str) -> dict[str, LicenceRule]:
    """Map file name -> licence from a GCompris resource README (blocks of Copyright/License/Files)."""
    out: dict[str, LicenceRule] = {}
    for block in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, list[str]] = {}
        key = None
        for line in block.splitlines():
            m = re.match(r"([A-Za-z]+):\s*(.*)$", line)
            if m:
                key = m.group(1).lower()
                fields.setdefault(key, []).append(m.group(2).strip())
            elif key and line.strip():
                fields[key].append(line.strip())
        names = [n for v in fields.get("files", []) for n in v.split() if n]
        rule = LicenceRule(names, " ".join(fields.get("license", [])).strip(),
                           " ".join(fields.get("copyright", [])).strip())
        for n in names:
            out[n] = rule
    return out
