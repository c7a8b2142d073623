"""Reading a legacy database with SQLAlchemy: rows of a resource mapping in key order,
streamed in batches (server-side cursors), with the filters of incremental and resumed
runs, plus the child rows, key sets and dedupe groups the mapping needs."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

from sqlalchemy import Engine, bindparam, create_engine, text

from importers.mapping.model import Child, ResourceMapping


def key_text(value: Any) -> str:
    """Legacy keys compare as text (an INT 12 and a VARCHAR '12' are the same key)."""
    return str(value).strip()


class Source:
    def __init__(self, url: str) -> None:
        # One streaming connection per resource mapping in progress, plus short queries.
        self.engine: Engine = create_engine(url, pool_size=4, max_overflow=4)
        self.q = self.engine.dialect.identifier_preparer.quote

    def close(self) -> None:
        self.engine.dispose()

    def _from(self, table: str | None, query: str | None) -> str:
        return f"{self.q(table)} src" if table else f"({query}) src"

    def _select(
        self, rm: ResourceMapping, after: Any, since: Any, what: str = "src.*"
    ) -> tuple[str, dict[str, Any]]:
        sql = f"SELECT {what} FROM {self._from(rm.table, rm.query)}"
        where, params = [], {}
        if after is not None:
            where.append(f"src.{self.q(rm.key)} > :after")
            params["after"] = after
        if since is not None and rm.updated:
            where.append(f"src.{self.q(rm.updated)} >= :since")
            params["since"] = since
        if where:
            sql += " WHERE " + " AND ".join(where)
        return sql, params

    def count(self, rm: ResourceMapping, after: Any, since: Any) -> int:
        sql, params = self._select(rm, after, since, "COUNT(*)")
        with self.engine.connect() as conn:
            return int(conn.execute(text(sql), params).scalar_one())

    def batches(
        self, rm: ResourceMapping, after: Any, since: Any, size: int
    ) -> Generator[list[dict[str, Any]], None, None]:
        sql, params = self._select(rm, after, since)
        sql += f" ORDER BY src.{self.q(rm.key)}"
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=size).execute(
                text(sql), params
            )
            for part in result.mappings().partitions(size):
                yield [dict(row) for row in part]

    def rows_by_keys(
        self, rm: ResourceMapping, keys: list[str], size: int
    ) -> Generator[list[dict[str, Any]], None, None]:
        """The rows with these keys (compared as text, as ``key_text``), in batches."""
        as_text = "CHAR" if self.engine.dialect.name in ("mysql", "mariadb") else "VARCHAR"
        sql = text(
            f"SELECT * FROM {self._from(rm.table, rm.query)} "
            f"WHERE CAST(src.{self.q(rm.key)} AS {as_text}) IN :keys ORDER BY src.{self.q(rm.key)}"
        ).bindparams(bindparam("keys", expanding=True))
        with self.engine.connect() as conn:
            for start in range(0, len(keys), size):
                rows = conn.execute(sql, {"keys": keys[start : start + size]}).mappings()
                part = [dict(row) for row in rows]
                if part:
                    yield part

    def keys(self, rm: ResourceMapping) -> set[str]:
        sql = f"SELECT src.{self.q(rm.key)} FROM {self._from(rm.table, rm.query)}"
        with self.engine.connect() as conn:
            return {key_text(k) for (k,) in conn.execute(text(sql)) if k is not None}

    def all_rows(self, rm: ResourceMapping) -> Iterator[dict[str, Any]]:
        sql = f"SELECT * FROM {self._from(rm.table, rm.query)} ORDER BY src.{self.q(rm.key)}"
        with self.engine.connect() as conn:
            for row in conn.execution_options(stream_results=True).execute(text(sql)).mappings():
                yield dict(row)

    def children(self, child: Child, parents: list[Any]) -> dict[str, list[dict[str, Any]]]:
        if not parents:
            return {}
        sql = (
            f"SELECT * FROM {self._from(child.table, child.query)} "
            f"WHERE src.{self.q(child.parent)} IN :parents"
        )
        if child.order:
            sql += f" ORDER BY src.{self.q(child.order)}"
        stmt = text(sql).bindparams(bindparam("parents", expanding=True))
        out: dict[str, list[dict[str, Any]]] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(stmt, {"parents": parents}).mappings():
                group = out.setdefault(key_text(row[child.parent]), [])
                group.append({**row, "_line": len(group) + 1})
        return out
