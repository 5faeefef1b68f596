"""Round-trip tests for the .rcc reader, using bundles written by a small helper here."""

import struct
import zlib

import pytest

from devdata.rcc import RccError, iter_rcc, parse_rcc

DIR, ZLIB = 0x02, 0x01


def _qt_hash(name: str) -> int:
    """Any u32 works for the reader; mimic a name hash so the field is not constant."""
    return zlib.crc32(name.encode("utf-16-be"))


def write_rcc(files: dict[str, tuple[bytes, bool]], version: int = 2) -> bytes:
    """Serialise {path: (data, compress)} into an rcc bundle (breadth-first tree like Qt's tool)."""
    root: dict = {}
    for path, spec in files.items():
        node = root
        parts = path.split("/")
        for d in parts[:-1]:
            node = node.setdefault(d, {})
        node[parts[-1]] = spec

    names = bytearray()
    name_off: dict[str, int] = {}
    data = bytearray()
    nodes: list[bytes] = []
    stamp = b"" if version == 1 else struct.pack(">Q", 0)

    def name_ref(n: str) -> int:
        """Offset of n in the names block, adding it once."""
        if n not in name_off:
            name_off[n] = len(names)
            names.extend(struct.pack(">HI", len(n), _qt_hash(n)) + n.encode("utf-16-be"))
        return name_off[n]

    # Children of one directory must be contiguous, so lay the tree out level by level.
    queue = [("", root)]
    nodes.append(b"")  # placeholder for the root
    slots = {id(root): 0}
    while queue:
        name, entry = queue.pop(0)
        index = slots[id(entry)]
        kids = sorted(entry.items(), key=lambda kv: _qt_hash(kv[0]))
        first = len(nodes)
        nodes.extend(b"" for _ in kids)
        nref = name_ref(name) if index else 0
        nodes[index] = struct.pack(">IHII", nref, DIR, len(kids), first) + stamp
        for i, (kname, kval) in enumerate(kids):
            if isinstance(kval, dict):
                slots[id(kval)] = first + i
                queue.append((kname, kval))
            else:
                payload, compress = kval
                blob = struct.pack(">I", len(payload)) + zlib.compress(payload) if compress else payload
                off = len(data)
                data.extend(struct.pack(">I", len(blob)) + blob)
                nodes[first + i] = (struct.pack(">IHHHI", name_ref(kname), ZLIB if compress else 0, 0, 0, off)
                                    + stamp)
    header = 20 if version < 3 else 24
    data_off = header
    names_off = data_off + len(data)
    tree_off = names_off + len(names)
    head = b"qres" + struct.pack(">IIII", version, tree_off, data_off, names_off)
    if version >= 3:
        head += struct.pack(">I", 0)
    return head + bytes(data) + bytes(names) + b"".join(nodes)


FILES = {
    "top.txt": (b"hello", False),
    "a/b/deep.bin": (bytes(range(256)) * 40, True),
    "a/b/raw.bin": (b"\x00\x01\x02", False),
    "a/x.json": (b'{"k": 1}' * 100, True),
    "a/empty": (b"", False),
    "c/\u00e9t\u00e9.txt": ("\u00e9t\u00e9".encode(), True),
}


@pytest.mark.parametrize("version", [1, 2, 3])
def test_round_trip(tmp_path, version):
    p = tmp_path / "bundle.rcc"
    p.write_bytes(write_rcc(FILES, version))
    got = dict(iter_rcc(p))
    assert got == {k: v[0] for k, v in FILES.items()}


def test_bad_magic():
    with pytest.raises(RccError):
        list(parse_rcc(b"nope" + bytes(20)))


def test_truncated():
    blob = write_rcc(FILES)
    with pytest.raises(RccError):
        list(parse_rcc(blob[: len(blob) - 10]))


def test_zstd_flag_without_module_is_clear(monkeypatch):
    import builtins

    blob = bytearray(write_rcc({"f": (b"abc", False)}))
    tree_off = struct.unpack_from(">I", blob, 8)[0]
    struct.pack_into(">H", blob, tree_off + 22 + 4, 0x04)  # mark the only file node as zstd
    real_import = builtins.__import__

    def no_zstd(name, *a, **k):
        if name == "zstandard":
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_zstd)
    with pytest.raises(RccError, match="zstandard"):
        list(parse_rcc(bytes(blob)))
