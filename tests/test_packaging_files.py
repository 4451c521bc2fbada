"""The file analysis shared by ``%%ds_job`` and notebooks: literal reads and writes of real snippets,
against a real directory; and fuzzed sources (never raises, only relative paths inside)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jupyter_ds_jobs.common.contract import is_safe_relpath
from jupyter_ds_jobs.packaging.files import FileRefs, find_file_refs


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nb")
    for rel in (
        "data.csv", "train.parquet", "arr.npy", "config.json", "notes.txt", "cache.pkl",
        "data/a.csv", "data/b.csv", "images/1.png", "images/2.png", "model/config.json", "top1.csv",
        "top2.csv",
    ):  # fmt: skip
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    outside = root.parent / f"{root.name}-outside"
    outside.mkdir()
    (outside / "secret.csv").write_text("no")
    (root / "escape").symlink_to(outside)
    return root


def refs(base: Path, source: str, **kwargs: object) -> FileRefs:
    return find_file_refs(textwrap.dedent(source), base, **kwargs)  # type: ignore[arg-type]


READS = [
    pytest.param("import pandas as pd\ndf = pd.read_csv('data.csv')", ["data.csv"], id="pandas"),
    pytest.param(
        "import polars as pl\npl.scan_parquet('train.parquet')", ["train.parquet"], id="polars-scan"
    ),
    pytest.param("df = read_csv(filepath_or_buffer='data.csv')", ["data.csv"], id="keyword"),
    pytest.param("x = np.load('arr.npy')", ["arr.npy"], id="numpy"),
    pytest.param("cfg = json.load(open('config.json'))", ["config.json"], id="open-in-json-load"),
    pytest.param("with open('config.json', 'r') as f:\n    f.read()", ["config.json"], id="with-open-r"),
    pytest.param("open('notes.txt', mode='rb')", ["notes.txt"], id="mode-keyword"),
    pytest.param("open('notes.txt', 'a').write('x')", ["notes.txt"], id="append-reads-too"),
    pytest.param("open('notes.txt', 'w')", [], id="write-does-not-read"),
    pytest.param("Path('notes.txt').read_text()", ["notes.txt"], id="path-read-text"),
    pytest.param("pathlib.Path('data', 'a.csv').read_bytes()", ["data/a.csv"], id="path-parts"),
    pytest.param("(Path('data') / 'b.csv').open()", ["data/b.csv"], id="path-div-open"),
    pytest.param("if Path('cache.pkl').exists():\n    pass", ["cache.pkl"], id="exists-check"),
    pytest.param("os.listdir('images')", ["images"], id="listdir-dir"),
    pytest.param("glob.glob('images/*.png')", ["images"], id="glob-dir"),
    pytest.param("glob.glob('top*.csv')", ["top1.csv", "top2.csv"], id="glob-here-expanded"),
    pytest.param("for p in Path('images').glob('*.png'):\n    pass", ["images"], id="path-glob"),
    pytest.param("AutoModel.from_pretrained('model')", ["model"], id="from-pretrained-dir"),
    pytest.param("AutoModel.from_pretrained('bert-base-uncased')", [], id="hub-id-not-local"),
    pytest.param("pd.read_csv('./data.csv')\npd.read_csv('data.csv')", ["data.csv"], id="normalized-once"),
    pytest.param("os.listdir('data')\npd.read_csv('data/a.csv')", ["data"], id="dir-covers-file"),
    pytest.param("shutil.copy('data.csv', 'copy.csv')", ["data.csv"], id="copy-reads-src"),
    pytest.param("load_dataset('csv', data_files={'train': 'data/a.csv'})", ["data/a.csv"], id="data-files"),
    pytest.param("pd.read_sql('data.csv', con)", [], id="sql-is-not-a-path"),
    pytest.param("f = 'data.csv'\nf.upper()\nprint(f)", [], id="a-string-is-not-a-read"),
    pytest.param("open('-'.join('data.csv'))\nopen(''.join(['data.csv']))", [], id="str-join-is-not-a-path"),
    pytest.param("open(os.path.join('data', 'a.csv'))", ["data/a.csv"], id="os-path-join"),
]


@pytest.mark.parametrize(("source", "expected"), READS)
def test_reads(base: Path, source: str, expected: list[str]) -> None:
    assert refs(base, source).reads == expected


WRITES = [
    pytest.param("open('out.txt', 'w').write('x')", ["out.txt"], id="open-w"),
    pytest.param("with open('out.bin', 'wb') as f:\n    pass", ["out.bin"], id="open-wb"),
    pytest.param("open('log.txt', 'a')", ["log.txt"], id="open-a"),
    pytest.param("open('new.txt', 'x')", ["new.txt"], id="open-x"),
    pytest.param("open('notes.txt', 'r+')", ["notes.txt"], id="open-r-plus"),
    pytest.param("open('notes.txt')", [], id="open-r-writes-nothing"),
    pytest.param("open('x.txt', mode)", [], id="mode-not-literal"),
    pytest.param("df.to_csv('results/df.csv', index=False)", ["results/df.csv"], id="to-csv-in-dir"),
    pytest.param("df.to_parquet(path='out.parquet')", ["out.parquet"], id="to-parquet-keyword"),
    pytest.param("df.write_csv('pl.csv')", ["pl.csv"], id="polars"),
    pytest.param("plt.savefig('fig.png', dpi=100)", ["fig.png"], id="savefig"),
    pytest.param("np.save('arr2.npy', a)", ["arr2.npy"], id="np-save"),
    pytest.param("torch.save(model.state_dict(), 'model.pt')", ["model.pt"], id="torch-save-second-arg"),
    pytest.param("joblib.dump(clf, 'clf.joblib')", ["clf.joblib"], id="joblib-dump"),
    pytest.param("img.save('x.png', 'PNG')", ["x.png"], id="save-first-literal-only"),
    pytest.param("Path('summary.md').write_text('# hi')", ["summary.md"], id="path-write-text"),
    pytest.param("p = Path('out')\n(p / 'a.txt').write_bytes(b'')", ["out/a.txt"], id="path-name-div"),
    pytest.param(
        "os.makedirs('results', exist_ok=True)\ndf.to_csv('results/a.csv')", ["results"], id="dir-covers"
    ),
    pytest.param("shutil.copyfile('data.csv', 'copy.csv')", ["copy.csv"], id="copy-writes-dst"),
    pytest.param("sqlite3.connect('db.sqlite')", ["db.sqlite"], id="sqlite"),
    pytest.param("f.write('hello.txt')\nx.to_sql('table', con)\ns.to_list()", [], id="not-writers"),
    pytest.param("Path(name).write_text('content.txt')", [], id="content-is-not-a-path"),
    pytest.param("df.to_csv()", [], id="to-csv-returns-a-string"),
]


@pytest.mark.parametrize(("source", "expected"), WRITES)
def test_writes(base: Path, source: str, expected: list[str]) -> None:
    assert refs(base, source).writes == expected


def test_names_bound_to_literal_paths(base: Path) -> None:
    r = refs(
        base,
        """
        DATA = Path('data')
        OUT = 'out'
        for name in ['a', 'b']:
            part = pd.read_csv(DATA / f'{name}.csv')
            part.to_csv(OUT + '/' + name + '.csv')
        src, dst = 'notes.txt', 'notes2.txt'
        shutil.copy(src, dst)
        cfg = os.path.join('model', 'config.json')
        open(cfg)
        """,
    )
    assert r.reads == ["data/a.csv", "data/b.csv", "notes.txt", "model/config.json"]
    assert r.writes == ["out/a.csv", "out/b.csv", "notes2.txt"]
    assert r.lines["data/a.csv"] == 5 and r.lines["model/config.json"] == 10


def test_names_bound_otherwise_are_not_literal(base: Path) -> None:
    r = refs(
        base,
        """
        def load(path='data.csv'):
            return pd.read_csv(path)
        import notes_txt as fname
        p = 'data.csv'
        p = compute()
        pd.read_csv(p)
        pd.read_csv(fname)
        with open('x') as q:
            pass
        pd.read_csv(q)
        """,
        values={"path": "data.csv", "q": "cache.pkl"},
    )
    assert r.reads == []  # a parameter, a reassigned name, an import, a with target


def test_values_from_the_namespace(base: Path) -> None:
    source = "df = pd.read_csv(DATA)\nopen(OUT, 'w')\nnp.load(arr)\npd.read_csv(n)\n"
    r = refs(
        base,
        source,
        values={"DATA": "data.csv", "OUT": PurePosixPath("o.txt"), "arr": Path("arr.npy"), "n": 3},
    )
    assert r.reads == ["data.csv", "arr.npy"] and r.writes == ["o.txt"]
    assert refs(base, "DATA = 'train.parquet'\npd.read_parquet(DATA)", values={"DATA": "data.csv"}).reads == [
        "train.parquet"
    ]  # the source's own binding wins


def test_paths_outside_the_base_are_ignored(base: Path) -> None:
    outside = base.parent / f"{base.name}-outside" / "secret.csv"
    r = refs(
        base,
        f"""
        pd.read_csv('../{base.name}-outside/secret.csv')
        pd.read_csv({str(outside)!r})
        pd.read_csv('escape/secret.csv')
        pd.read_csv('data/../data.csv')
        pd.read_csv('~/data.csv')
        pd.read_csv('https://example.com/data.csv')
        pd.read_csv('s3://bucket/data.csv')
        open('../out.txt', 'w')
        open('/tmp/out.txt', 'w')
        open('escape/out.txt', 'w')
        open('C:/out.txt', 'w')
        open('a\\\\b.txt', 'w')
        open('.', 'w')
        """,
    )
    assert r == FileRefs()
    assert outside.exists() and (base / "escape" / "secret.csv").exists()


def test_missing_definite_reads(base: Path) -> None:
    r = refs(
        base,
        """
        pd.read_csv('gone.csv')
        open('also_gone.txt')
        Path('nope.txt').read_text()
        AutoModel.from_pretrained('gpt2')
        os.path.exists('maybe.txt')
        Image.open('pic.png')
        open('made.txt', 'w').write('x')
        open('made.txt').read()
        os.makedirs('out')
        pd.read_csv('out/x.csv')
        pd.read_csv('data.csv')
        """,
    )
    assert r.missing == ["gone.csv", "also_gone.txt", "nope.txt"]
    assert r.lines["also_gone.txt"] == 3
    assert r.reads == ["data.csv"]


def test_ipython_syntax_is_tolerated_and_a_syntax_error_gives_nothing(base: Path) -> None:
    r = refs(base, "!ls data\n%time df = pd.read_csv('data.csv')\n%matplotlib inline\nplt.savefig('f.png')\n")
    assert r.reads == ["data.csv"] and r.writes == ["f.png"]
    assert refs(base, "%%bash\ncat data.csv > out.txt\n") == FileRefs()
    assert refs(base, "pd.read_csv('data.csv')\nif x\n") == FileRefs()


def test_nothing_is_created_or_changed(base: Path) -> None:
    before = sorted((str(p), p.stat().st_mtime_ns) for p in base.rglob("*"))
    r = refs(base, "os.makedirs('newdir/sub')\nopen('newdir2/out.txt', 'w')\nopen('notes.txt', 'w')\n")
    assert r.writes == ["newdir/sub", "newdir2/out.txt", "notes.txt"]
    assert sorted((str(p), p.stat().st_mtime_ns) for p in base.rglob("*")) == before


# --------------------------------------------------------------------------- fuzzing

_ODD_PATHS = [
    "data.csv", "data", "../x", "/etc/passwd", "a/../b", "./data/a.csv", "escape/secret.csv", "", ".",
    "~/x", "http://h/p", "C:/x", "a\\b", "a\x00b", "images/*.png", "*.csv", "**/*.py", "[", "top?.csv",
]  # fmt: skip
_PATHS = st.one_of(st.sampled_from(_ODD_PATHS), st.text(min_size=0, max_size=30))
_TEMPLATES = st.sampled_from(
    [
        "open({p})", "open({p}, 'w')", "open({p}, {p})", "pd.read_csv({p})", "df.to_csv({p})",
        "Path({p}).read_text()", "Path({p}) / {p}", "(Path({p}) / {p}).write_text('x')",
        "glob.glob({p})", "shutil.copy({p}, {p})", "torch.save(m, {p})", "x = {p}\nopen(x)",
        "for n in [{p}, {p}]:\n    np.load(n)", "open(f'{{x}}/' + {p}, 'a')", "os.makedirs({p})",
        "sqlite3.connect({p})", "Path().joinpath({p}).open('w')",
    ]
)  # fmt: skip


def _check_paths(base: Path, r: FileRefs) -> None:
    real = base.resolve()
    for path in [*r.reads, *r.writes, *r.missing]:
        assert is_safe_relpath(path) and path == str(PurePosixPath(path)) and not path.startswith("~")
        assert (base / path).resolve().is_relative_to(real), path
    for path in r.reads:
        assert (base / path).exists()
    assert set(r.lines) >= {*r.reads, *r.writes, *r.missing}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(_TEMPLATES, st.lists(_PATHS, min_size=2, max_size=2)), min_size=1, max_size=6))
def test_fuzz_literal_calls(base: Path, calls: list[tuple[str, list[str]]]) -> None:
    source = "\n".join(t.format(p=repr(a)).replace("{p}", repr(b)) for t, (a, b) in calls)
    _check_paths(base, find_file_refs(source, base))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.text(max_size=200),
    st.dictionaries(st.text(max_size=5), st.one_of(st.text(max_size=10), st.integers())),
)
def test_fuzz_any_text(base: Path, source: str, values: dict[str, object]) -> None:
    _check_paths(base, find_file_refs(source, base, values=values))


def test_deep_nesting_does_not_raise(base: Path) -> None:
    deep = "Path('data')" + " / 'a'" * 3000
    assert find_file_refs(f"open({deep}, 'w')", base).writes == []
    assert find_file_refs("(" * 500 + "open('x', 'w')" + ")" * 500, base) is not None
    assert os.listdir(base)  # still there, untouched
