"""A damaged embedded database is refused at start-up with the reason, instead of running on.

SQLite reads its write-ahead log (face2paint.db-wal) up to the first frame whose checksum
fails and silently ignores the rest: at a torn final write (a crash mid-commit) that is
right, since nothing after it was committed; but when a frame in the middle is damaged,
transactions committed after it (jobs accepted, stages finished) would vanish without a word.
`check_sqlite` tells the two apart: a bad frame followed by a later commit frame of the same
log generation (same salts) is damage. It also runs PRAGMA quick_check on the database.

WAL format (sqlite.org/fileformat2.html#walformat): a 32-byte header (magic, version, page
size, checkpoint sequence, salt-1, salt-2, checksum), then frames of a 24-byte header (page
number, database size after commit or 0, salt-1, salt-2, checksum) and one page each; the
checksums run cumulatively over the header's first 24 bytes and each frame's first 8 header
bytes and page.
"""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path

_MAGIC_LE, _MAGIC_BE = 0x377F0682, 0x377F0683
_HEADER, _FRAME_HEADER = 32, 24


class DatabaseDamaged(RuntimeError):
    """The SQLite database or its journal is damaged; the message says what to do."""


def _checksum(data: bytes, s0: int, s1: int, big_endian: bool) -> tuple[int, int]:
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def wal_damage(wal: bytes) -> str | None:
    """Why this WAL would lose committed transactions, or None when it is sound (empty, or
    only a torn tail after its last good commit)."""
    if len(wal) < _HEADER:
        return None
    magic, _version, page_size, _seq, salt1, salt2, c1, c2 = struct.unpack(">8I", wal[:_HEADER])
    if magic not in (_MAGIC_LE, _MAGIC_BE):
        return "its header is not a write-ahead log header"
    big = magic == _MAGIC_BE
    if _checksum(wal[:24], 0, 0, big) != (c1, c2):
        return None  # an invalid header: SQLite ignores the whole log, which was never synced
    frame_size = _FRAME_HEADER + page_size
    n_frames = (len(wal) - _HEADER) // frame_size
    s = (c1, c2)
    for i in range(n_frames):
        off = _HEADER + i * frame_size
        head = wal[off:off + _FRAME_HEADER]
        _page, _commit, f_salt1, f_salt2, f1, f2 = struct.unpack(">6I", head)
        s = _checksum(head[:8] + wal[off + _FRAME_HEADER:off + frame_size], *s, big)
        if (f_salt1, f_salt2) == (salt1, salt2) and s == (f1, f2):
            continue
        # The log ends here for SQLite. Damage if a commit of this generation comes later.
        for j in range(i + 1, n_frames):
            _p, commit, l1, l2, _a, _b = struct.unpack(">6I", wal[_HEADER + j * frame_size:][:_FRAME_HEADER])
            if commit and (l1, l2) == (salt1, salt2):
                return (f"frame {i + 1} of {n_frames} is damaged and committed transactions "
                        f"follow it (up to frame {j + 1})")
        return None
    return None


def check_sqlite(db_path: str | Path) -> None:
    """DatabaseDamaged with the reason and what to do, if the database file or its WAL is
    damaged. Run it before any process opens the database (opening replays the WAL)."""
    db = Path(db_path)
    wal = Path(f"{db}-wal")
    if wal.exists():
        why = wal_damage(wal.read_bytes())
        if why:
            raise DatabaseDamaged(
                f"the journal {wal} of the embedded database is damaged: {why}. Stop every "
                f"face2paint process and keep a copy of {db.name} and {wal.name}; then restore "
                f"both from a backup, or move {wal.name} aside to start from the last checkpoint "
                "(work accepted since then is lost)")
    if not db.exists() or db.stat().st_size == 0:
        return
    try:
        conn = sqlite3.connect(db, timeout=30)  # read-write: it may replay the (checked) WAL
        try:
            problems = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        problems = [str(e)]
    if problems != ["ok"]:
        raise DatabaseDamaged(
            f"the embedded database {db} is damaged ({'; '.join(problems)[:300]}). Stop every "
            "face2paint process, keep a copy of the file, and restore it from a backup (or "
            "move it aside to start empty)")
