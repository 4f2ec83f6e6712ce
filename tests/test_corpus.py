"""Every corpus image through a 4-shard imagestore table (apsw).

Oracles: ../shared/corpus/manifest.tsv for format/width/height/bytes/hash, the
files themselves for the data read back, the spec's splitmix64 placement for
the shard of each row, and plain SQLite (no extension) reading a shard file.
"""
import apsw
import pytest

from harness import connect, corpus_bytes, manifest, shard_of, shard_paths

SHARDS = 4
MANIFEST = manifest()


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """A db whose 4-shard table `images` holds the whole corpus, ids 1..N."""
    path = tmp_path_factory.mktemp("corpus") / "test.db"
    con = connect(path)
    con.execute(f"CREATE VIRTUAL TABLE images USING imagestore(shards={SHARDS})")
    con.execute("BEGIN")
    for rowid, m in enumerate(MANIFEST, start=1):
        con.execute("INSERT INTO images(id, name, data) VALUES (?, ?, ?)",
                    (rowid, m["file"], corpus_bytes(m["file"])))
    con.execute("COMMIT")
    con.close()
    return path


def expected_rows():
    return {rowid: (m["file"], m["format"], m["width"], m["height"], m["bytes"], m["blake3"])
            for rowid, m in enumerate(MANIFEST, start=1)}


def check_table(con):
    got = {r[0]: r[1:] for r in con.execute(
        "SELECT id, name, format, width, height, bytes, hash FROM images")}
    want = expected_rows()
    assert sorted(got) == sorted(want)
    mismatches = {i: (want[i], got[i]) for i in want if got[i] != want[i]}
    assert not mismatches, "rows differing from manifest (want, got): %r" % mismatches
    for rowid, name, data, shard in con.execute("SELECT id, name, data, shard FROM images"):
        assert data == corpus_bytes(name), f"data of {name} differs from the file"
        assert shard == shard_of(rowid, SHARDS), f"{name}: shard {shard}"


def test_corpus_rows_match_manifest(db):
    con = connect(db)
    check_table(con)
    counts = dict(con.execute("SELECT shard, count(*) FROM images GROUP BY shard"))
    assert set(counts) == set(range(SHARDS)), f"rows per shard: {counts}"
    assert sum(counts.values()) == len(MANIFEST)
    con.close()


def test_corpus_survives_reopen(db):
    for _ in range(2):
        con = connect(db)
        check_table(con)
        con.close()


def test_shard_files_are_plain_sqlite(db):
    """Read each shard file with plain SQLite, no extension loaded."""
    want = expected_rows()
    seen = set()
    for shard, path in enumerate(shard_paths(db, "images", SHARDS)):
        assert path.exists(), path
        con = apsw.Connection(":memory:")
        con.execute("ATTACH ? AS s", (str(path),))
        assert con.execute("PRAGMA s.journal_mode").fetchall() == [("wal",)]
        assert con.execute("PRAGMA s.integrity_check").fetchall() == [("ok",)]
        rows = con.execute("SELECT i.id, i.name, i.format, i.width, i.height, i.bytes, i.hash, b.data "
                           "FROM s.images AS i JOIN s.blobs AS b USING (blob_id)").fetchall()
        assert rows, f"shard {shard} holds no rows"
        for rowid, *facts, data in rows:
            assert shard_of(rowid, SHARDS) == shard, f"id {rowid} found in shard {shard}"
            assert tuple(facts) == want[rowid]
            assert data == corpus_bytes(facts[0])
            seen.add(rowid)
        con.close()
    assert seen == set(want)
