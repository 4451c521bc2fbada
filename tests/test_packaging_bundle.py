"""Deterministic zips, sha256 hash cache, safe extraction: all on real files."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
import zipfile
from pathlib import Path

import pytest

from jupyter_ds_jobs.common.bundle import HashCache, safe_extract, sha256_file, zip_path
from jupyter_ds_jobs.common.errors import InvalidArgument, NotFound


def make_pkg(root: Path) -> Path:
    pkg = root / "mypkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "empty").mkdir()
    (pkg / "__init__.py").write_text("from . import a\n")
    (pkg / "a.py").write_text("X = 1\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("Y = 2\n" * 1000)
    (pkg / "data.bin").write_bytes(os.urandom(3000))
    return pkg


def test_zip_directory_layout_and_attributes(tmp_path: Path) -> None:
    pkg = make_pkg(tmp_path / "src")
    os.chmod(pkg / "a.py", 0o600)
    sha, size = zip_path(pkg, tmp_path / "out" / "m.zip")
    data = (tmp_path / "out" / "m.zip").read_bytes()
    assert sha == hashlib.sha256(data).hexdigest() and size == len(data)
    with zipfile.ZipFile(tmp_path / "out" / "m.zip") as zf:
        names = zf.namelist()
        assert names == sorted(names)
        assert names == [
            "mypkg/",
            "mypkg/__init__.py",
            "mypkg/a.py",
            "mypkg/data.bin",
            "mypkg/empty/",
            "mypkg/sub/",
            "mypkg/sub/__init__.py",
            "mypkg/sub/b.py",
        ]
        for info in zf.infolist():
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
            mode = info.external_attr >> 16
            assert stat.S_IMODE(mode) == (0o755 if info.is_dir() else 0o644)
        assert zf.read("mypkg/sub/b.py") == (pkg / "sub" / "b.py").read_bytes()
        assert zf.read("mypkg/data.bin") == (pkg / "data.bin").read_bytes()
        assert zf.testzip() is None


def test_zip_single_file(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("print('hi')\n")
    zip_path(tmp_path / "main.py", tmp_path / "main.zip")
    with zipfile.ZipFile(tmp_path / "main.zip") as zf:
        assert zf.namelist() == ["main.py"]
        assert zf.read("main.py") == b"print('hi')\n"


def test_zip_is_deterministic(tmp_path: Path) -> None:
    pkg = make_pkg(tmp_path / "src")
    sha1, size1 = zip_path(pkg, tmp_path / "one.zip")
    sha2, size2 = zip_path(pkg, tmp_path / "two.zip")
    assert (sha1, size1) == (sha2, size2)
    assert (tmp_path / "one.zip").read_bytes() == (tmp_path / "two.zip").read_bytes()

    # new mtimes and modes: same zip
    for p in pkg.rglob("*"):
        os.utime(p, ns=(time.time_ns(), 1_700_000_000_000_000_000))
    os.chmod(pkg / "a.py", 0o700)
    assert zip_path(pkg, tmp_path / "three.zip")[0] == sha1

    # byte-compiled litter and VCS / notebook checkpoints: ignored
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\x00junk")
    (pkg / "sub" / "stray.pyc").write_bytes(b"junk")
    (pkg / ".git").mkdir()
    (pkg / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (pkg / ".ipynb_checkpoints").mkdir()
    (pkg / ".ipynb_checkpoints" / "a-checkpoint.py").write_text("")
    assert zip_path(pkg, tmp_path / "four.zip")[0] == sha1

    # same tree created in another place in another order: same zip
    other = tmp_path / "elsewhere" / "mypkg"
    (other / "sub").mkdir(parents=True)
    (other / "sub" / "b.py").write_bytes((pkg / "sub" / "b.py").read_bytes())
    (other / "data.bin").write_bytes((pkg / "data.bin").read_bytes())
    (other / "sub" / "__init__.py").write_text("")
    (other / "a.py").write_text("X = 1\n")
    (other / "__init__.py").write_text("from . import a\n")
    (other / "empty").mkdir()
    assert zip_path(other, tmp_path / "five.zip")[0] == sha1

    # a real change: different zip
    (pkg / "a.py").write_text("X = 2\n")
    assert zip_path(pkg, tmp_path / "six.zip")[0] != sha1


def test_zip_into_the_zipped_directory_excludes_itself(tmp_path: Path) -> None:
    pkg = make_pkg(tmp_path)
    first = zip_path(pkg, pkg / "self.zip")
    second = zip_path(pkg, pkg / "self.zip")  # the first zip is now inside the tree
    assert first == second
    with zipfile.ZipFile(pkg / "self.zip") as zf:
        assert "mypkg/self.zip" not in zf.namelist()
    assert not [p for p in pkg.iterdir() if p.name.endswith(".part")]


def test_zip_follows_symlinks_without_looping(tmp_path: Path) -> None:
    pkg = make_pkg(tmp_path)
    (pkg / "link_to_a.py").symlink_to(pkg / "a.py")
    (pkg / "sub" / "loop").symlink_to(pkg)
    zip_path(pkg, tmp_path / "l.zip")
    with zipfile.ZipFile(tmp_path / "l.zip") as zf:
        assert zf.read("mypkg/link_to_a.py") == b"X = 1\n"
        assert not any("loop" in n for n in zf.namelist())


def test_zip_missing_source(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="nothere"):
        zip_path(tmp_path / "nothere", tmp_path / "x.zip")


def test_zip_streams_large_file(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.mkdir()
    chunk = os.urandom(1 << 20)
    with open(big / "blob.bin", "wb") as fh:
        for _ in range(40):
            fh.write(chunk)
    _, size = zip_path(big, tmp_path / "big.zip")
    assert size > 40 << 20  # random data does not compress
    dest = tmp_path / "out"
    safe_extract(tmp_path / "big.zip", dest)
    assert sha256_file(dest / "big" / "blob.bin") == sha256_file(big / "blob.bin")


def test_sha256_file_small_chunks(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"abc" * 1000)
    assert sha256_file(f, chunk=7) == hashlib.sha256(b"abc" * 1000).hexdigest()


def test_zip_roundtrip_through_safe_extract(tmp_path: Path) -> None:
    pkg = make_pkg(tmp_path / "src")
    zip_path(pkg, tmp_path / "m.zip")
    safe_extract(tmp_path / "m.zip", tmp_path / "job")
    for p in pkg.rglob("*"):
        twin = tmp_path / "job" / p.relative_to(pkg.parent)
        assert twin.is_dir() if p.is_dir() else twin.read_bytes() == p.read_bytes()


def test_hash_cache_skips_rehash_until_mtime_changes(tmp_path: Path) -> None:
    f = tmp_path / "data.bin"
    f.write_bytes(b"A" * 4096)
    past = 1_600_000_000_000_000_000
    os.utime(f, ns=(past, past))
    cache_file = tmp_path / "state" / "hashes.json"
    cache = HashCache(cache_file)
    original = cache.sha256(f)
    assert original == hashlib.sha256(b"A" * 4096).hexdigest()
    assert cache.misses == 1

    # same size, same mtime, different content: the cached digest is returned (no rehash)
    f.write_bytes(b"B" * 4096)
    os.utime(f, ns=(past, past))
    assert cache.sha256(f) == original
    assert cache.hits == 1

    # a fresh cache object reads the same file on disk
    reloaded = HashCache(cache_file)
    assert reloaded.sha256(f) == original
    assert reloaded.misses == 0
    entries = json.loads(cache_file.read_text())["entries"]
    assert entries[str(f)] == [4096, past, original]

    # the mtime moves: rehashed
    os.utime(f, ns=(past + 1, past + 1))
    assert cache.sha256(f) == hashlib.sha256(b"B" * 4096).hexdigest()
    assert cache.misses == 2


def test_hash_cache_relative_path_and_size_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    f = Path("rel.txt")
    f.write_text("one")
    past = 1_600_000_000_000_000_000
    os.utime(f, ns=(past, past))
    cache = HashCache(tmp_path / "h.json")
    cache.sha256(f)
    f.write_text("three")
    os.utime(f, ns=(past, past))
    assert cache.sha256(f) == hashlib.sha256(b"three").hexdigest()
    assert str(tmp_path / "rel.txt") in json.loads((tmp_path / "h.json").read_text())["entries"]


def test_hash_cache_does_not_cache_racy_files(tmp_path: Path) -> None:
    f = tmp_path / "fresh"
    f.write_text("just written")  # mtime is now: could still change within the same timestamp
    cache = HashCache(tmp_path / "h.json")
    cache.sha256(f)
    cache.sha256(f)
    assert cache.misses == 2
    assert not (tmp_path / "h.json").exists()


def test_hash_cache_survives_corrupt_file_and_bounds_size(tmp_path: Path) -> None:
    (tmp_path / "h.json").write_text("{not json")
    cache = HashCache(tmp_path / "h.json", max_entries=2)
    past = 1_600_000_000_000_000_000
    for i in range(4):
        f = tmp_path / f"f{i}"
        f.write_text(str(i))
        os.utime(f, ns=(past, past))
        cache.sha256(f)
    entries = json.loads((tmp_path / "h.json").read_text())["entries"]
    assert list(entries) == [str(tmp_path / "f2"), str(tmp_path / "f3")]


def test_hash_cache_rejects_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="not a regular file"):
        HashCache(tmp_path / "h.json").sha256(tmp_path)


def write_zip(path: Path, entries: list[tuple[str, bytes, int]]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = mode << 16
            zf.writestr(info, data)


REG = stat.S_IFREG | 0o644
LNK = stat.S_IFLNK | 0o777


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("../evil", r"'\.\.' in zip entry '\.\./evil'"),
        ("ok/../../evil", r"'\.\.' in zip entry"),
        ("..\\evil", r"'\.\.' in zip entry"),
        ("/etc/evil", "absolute path in zip entry '/etc/evil'"),
        ("C:/evil", "absolute path"),
    ],
)
def test_safe_extract_refuses_escaping_names(tmp_path: Path, name: str, match: str) -> None:
    z = tmp_path / "bad.zip"
    write_zip(z, [("good.txt", b"fine", REG), (name, b"pwned", REG)])
    dest = tmp_path / "dest"
    with pytest.raises(InvalidArgument, match=match):
        safe_extract(z, dest)
    assert not (tmp_path / "evil").exists()
    assert not (dest / "good.txt").exists()  # checked before anything is written


def test_safe_extract_refuses_symlink_entry_escaping(tmp_path: Path) -> None:
    z = tmp_path / "bad.zip"
    write_zip(z, [("link", b"../outside", LNK), ("link/evil", b"pwned", REG)])
    with pytest.raises(InvalidArgument, match="symlink zip entry 'link'"):
        safe_extract(z, tmp_path / "dest")
    write_zip(z, [("abs", b"/etc", LNK)])
    with pytest.raises(InvalidArgument, match="symlink zip entry 'abs'"):
        safe_extract(z, tmp_path / "dest2")


def test_safe_extract_allows_inner_symlink(tmp_path: Path) -> None:
    z = tmp_path / "ok.zip"
    write_zip(z, [("pkg/real.txt", b"content", REG), ("pkg/alias.txt", b"real.txt", LNK)])
    safe_extract(z, tmp_path / "dest")
    assert (tmp_path / "dest" / "pkg" / "alias.txt").is_symlink()
    assert (tmp_path / "dest" / "pkg" / "alias.txt").read_bytes() == b"content"


def test_safe_extract_refuses_writing_through_existing_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sneaky").symlink_to(outside)
    z = tmp_path / "bad.zip"
    write_zip(z, [("sneaky/evil.txt", b"pwned", REG)])
    with pytest.raises(InvalidArgument, match=r"sneaky/evil\.txt"):
        safe_extract(z, dest)
    assert list(outside.iterdir()) == []


def test_safe_extract_keeps_executable_bit(tmp_path: Path) -> None:
    z = tmp_path / "x.zip"
    write_zip(z, [("run.sh", b"#!/bin/sh\n", stat.S_IFREG | 0o755), ("plain.txt", b"x", REG)])
    safe_extract(z, tmp_path / "d")
    assert os.access(tmp_path / "d" / "run.sh", os.X_OK)
    assert not os.access(tmp_path / "d" / "plain.txt", os.X_OK)


DIR = stat.S_IFDIR | 0o755


def snapshot(root: Path) -> dict[str, object] | None:
    """Everything under ``root``, links not followed; None when it does not exist."""
    if not root.exists():
        return None
    tree: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                tree[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                tree[rel] = ("dir",)
            else:
                tree[rel] = ("file", p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
    return tree


def assert_refused_untouched(z: Path, dest: Path, match: str) -> None:
    """``safe_extract`` refuses ``z`` and leaves ``dest`` and its parent exactly as they were."""
    before, around = snapshot(dest), snapshot(dest.parent)
    with pytest.raises(InvalidArgument, match=match):
        safe_extract(z, dest)
    assert snapshot(dest) == before
    assert snapshot(dest.parent) == around


def test_safe_extract_bad_symlink_last_writes_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    z = tmp_path / "bad.zip"
    entries = [("a.txt", b"A", REG), ("d/", b"", DIR), ("d/b.txt", b"B", REG), ("keep.txt", b"theirs", REG)]
    write_zip(z, [*entries, ("d/evil", b"../../x", LNK)])
    assert_refused_untouched(z, dest, "symlink zip entry 'd/evil' points outside")
    # a destination that did not exist is not created either
    assert_refused_untouched(z, tmp_path / "new" / "dest", "d/evil")


CHAIN = [
    ("l1", b"l2/..", LNK),
    ("l2", b"l3/..", LNK),
    ("l3", b"l4/..", LNK),
    ("l4", b"l5/..", LNK),
    ("l5", b".", LNK),
]


@pytest.mark.parametrize("order", [1, -1], ids=["l1-first", "l5-first"])
def test_safe_extract_refuses_symlink_chain_escaping(tmp_path: Path, order: int) -> None:
    # alone, each link looks inside; together l1 is four levels above the target
    z = tmp_path / "chain.zip"
    write_zip(z, [("first.txt", b"x", REG), *CHAIN[::order]])
    assert_refused_untouched(
        z, tmp_path / "state" / "jobs" / "dest", r"symlink zip entry 'l\d' points outside"
    )
    write_zip(z, [("first.txt", b"x", REG), *CHAIN, ("l1/peek", b"y", REG)])
    assert_refused_untouched(z, tmp_path / "d2", "symlink zip entry 'l1' points outside")


def test_safe_extract_symlink_chain_inside_resolves_on_the_final_tree(tmp_path: Path) -> None:
    # l3 -> a/b/c, l2 -> a/b, l1 -> a; 'l1/x.txt' comes before the directories it lands in
    z = tmp_path / "ok.zip"
    write_zip(
        z,
        [
            ("l1", b"l2/..", LNK),
            ("l2", b"l3/..", LNK),
            ("l3", b"a/b/c", LNK),
            ("l1/x.txt", b"through", REG),
            ("a/b/c/", b"", DIR),
        ],
    )
    dest = tmp_path / "dest"
    safe_extract(z, dest)
    assert (dest / "l1").is_symlink() and os.readlink(dest / "l1") == "l2/.."
    assert os.path.realpath(dest / "l1") == os.path.realpath(dest / "a")
    assert not (dest / "a" / "x.txt").is_symlink()
    assert (dest / "a" / "x.txt").read_bytes() == b"through"
    assert (dest / "a" / "b" / "c").is_dir()


def test_safe_extract_writes_through_an_inner_symlink_to_a_directory(tmp_path: Path) -> None:
    z = tmp_path / "ok.zip"
    write_zip(z, [("alias", b"real", LNK), ("alias/new.txt", b"N", REG), ("real/old.txt", b"O", REG)])
    dest = tmp_path / "dest"
    safe_extract(z, dest)
    assert (dest / "alias").is_symlink()
    assert (dest / "real" / "new.txt").read_bytes() == b"N"
    assert sorted(p.name for p in (dest / "alias").iterdir()) == ["new.txt", "old.txt"]


def test_safe_extract_refuses_writing_through_an_inner_symlink_leading_outside(tmp_path: Path) -> None:
    # sub/hop -> .. is the target itself (fine); jump -> sub/hop/.. is its parent
    z = tmp_path / "bad.zip"
    write_zip(
        z,
        [
            ("ok.txt", b"x", REG),
            ("sub/", b"", DIR),
            ("sub/hop", b"..", LNK),
            ("jump", b"sub/hop/..", LNK),
            ("jump/evil.txt", b"pwned", REG),
        ],
    )
    assert_refused_untouched(z, tmp_path / "dest", "symlink zip entry 'jump' points outside")
    assert not (tmp_path / "evil.txt").exists()


def test_safe_extract_never_writes_through_an_existing_symlink_outside(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sneaky").symlink_to(outside)
    z = tmp_path / "bad.zip"
    write_zip(z, [("good.txt", b"x", REG), ("sneaky/evil.txt", b"pwned", REG)])
    assert_refused_untouched(z, dest, r"zip entry 'sneaky/evil\.txt' would be written outside")
    write_zip(z, [("good.txt", b"x", REG), ("hop", b"sneaky", LNK), ("hop/evil.txt", b"pwned", REG)])
    assert_refused_untouched(z, dest, "symlink zip entry 'hop' points outside")
    # a file entry of the link's own name replaces the link; nothing lands outside
    write_zip(z, [("sneaky", b"plain", REG)])
    safe_extract(z, dest)
    assert not (dest / "sneaky").is_symlink() and (dest / "sneaky").read_bytes() == b"plain"
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ([("x", b"f", REG), ("x/", b"", DIR)], "zip entry 'x/' conflicts with zip entry 'x'"),
        ([("x", b"f", REG), ("x/y", b"g", REG)], "zip entry 'x/y' conflicts with file 'x'"),
        (
            [("x/f", b"", REG), ("alias", b"x", LNK), ("alias/f/", b"", DIR)],
            "'alias/f/' conflicts with file 'x/f'",
        ),
        ([("a.txt", b"1", REG), ("./a.txt", b"2", REG)], r"zip entry '\./a\.txt' conflicts"),
        (
            [("real/", b"", DIR), ("alias", b"real", LNK), ("alias/f", b"1", REG), ("real/f", b"2", REG)],
            "conflicts",
        ),
    ],
)
def test_safe_extract_refuses_conflicting_entries(
    tmp_path: Path, entries: list[tuple[str, bytes, int]], match: str
) -> None:
    z = tmp_path / "bad.zip"
    write_zip(z, [("first.txt", b"x", REG), *entries])
    assert_refused_untouched(z, tmp_path / "dest", match)


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ([("a", b"b", LNK), ("b", b"a", LNK)], "too many levels of symlinks"),
        ([("d", b"x/..", LNK)], r"goes up \('\.\.'\) from a path that is not a directory"),
        ([("alias", b"nowhere", LNK), ("alias/f", b"1", REG)], "symlink that leads to no directory"),
    ],
)
def test_safe_extract_refuses_loops_and_links_to_nothing(
    tmp_path: Path, entries: list[tuple[str, bytes, int]], match: str
) -> None:
    z = tmp_path / "bad.zip"
    write_zip(z, [("first.txt", b"x", REG), *entries])
    assert_refused_untouched(z, tmp_path / "dest", match)


def test_safe_extract_links_cannot_escape_across_two_extractions(tmp_path: Path) -> None:
    # 'd -> x/..' looks inside while x is missing; a later ZIP making x -> . would put d above dest
    dest = tmp_path / "dest"
    first, second = tmp_path / "1.zip", tmp_path / "2.zip"
    write_zip(first, [("d", b"x/..", LNK)])
    write_zip(second, [("x", b".", LNK)])
    assert_refused_untouched(first, dest, "symlink zip entry 'd'")
    # an existing link is not swapped for another target (links already there could depend on it)
    write_zip(first, [("x", b"sub", LNK), ("sub/", b"", DIR)])
    safe_extract(first, dest)
    safe_extract(first, dest)  # the same links again: fine
    assert_refused_untouched(second, dest, "zip entry 'x' conflicts with symlink 'x'")
