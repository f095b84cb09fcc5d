"""A small crash-safe key -> JSON store in SQLite: the generation cache and the score cache both sit on it."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any


def stable_key(*parts: Any) -> str:
    """A short hash of any JSON-able parts: the key of a cached generation, score or run's settings."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class SqliteKV:
    """Every write commits, so a killed job loses at most the batch in flight. Safe across threads."""

    def __init__(self, path: str | Path, table: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(path), check_same_thread=False)
        self.table = table
        self.conn.execute(f"create table if not exists {table} (key text primary key, value text not null)")
        self.lock = threading.Lock()

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with self.lock:
            for i in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
                part = keys[i:i + 500]
                rows = self.conn.execute(f"select key, value from {self.table} where key in "
                                         f"({','.join('?' * len(part))})", part).fetchall()
                out.update({k: json.loads(v) for k, v in rows})
        return out

    def put_many(self, items: dict[str, Any]) -> None:
        with self.lock:
            self.conn.executemany(f"insert or replace into {self.table} values (?, ?)",
                                  [(k, json.dumps(v, ensure_ascii=False)) for k, v in items.items()])
            self.conn.commit()

    def close(self) -> None:
        self.conn.close()
