"""devdata.debpkg: the apt-get/dpkg cache the offline data builders use (tools faked on PATH)."""
import os
import stat

from devdata.debpkg import DebCache

FAKE_TOOLS = {
    # apt-get download NAME: writes NAME_1.0_all.deb into the working folder (the cache), as apt-get does
    "apt-get": 'echo deb > "$2_1.0_all.deb"',
    # dpkg-deb -f DEB Version / dpkg -x DEB ROOT: fail the way dpkg does when the path does not lead to the file
    "dpkg-deb": 'test -f "$2" || { echo "failed to read archive $2" >&2; exit 2; }; echo 1.0',
    "dpkg": 'test -f "$2" || exit 2; mkdir -p "$3/usr/share/doc/demo" && echo text > "$3/usr/share/doc/demo/copyright"',
}


def test_a_relative_cache_folder_works_from_any_working_folder(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKE_TOOLS.items():
        tool = bin_dir / name
        tool.write_text(f"#!/bin/sh\n{body}\n")
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    package = DebCache("../data/.debcache").get("demo")  # relative, as bench/make_photo_set.py's default is
    assert package.version == "1.0" and package.deb == tmp_path / "data" / ".debcache" / "demo_1.0_all.deb"
    assert package.copyright_text().strip() == "text"
