"""Lazy remote DataFrames: each is a SQL query that runs on the cluster when its rows are
asked for (`collect`, `count`, `toPandas`, `to_arrow`, `show`)."""
from __future__ import annotations

import itertools
from typing import Any, List, Optional, Sequence, Union

import pyarrow as pa

_alias = itertools.count(1)


def _string(value: str) -> str:
    """A SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def _ident(name: str) -> str:
    """A SQL identifier, quoted (case and odd characters kept)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"a column name must be a non-empty str, got {name!r}")
    return '"' + name.replace('"', '""') + '"'


def _operand(value: Any) -> str:
    return value.sql if isinstance(value, Column) else lit(value).sql


def _binary(op: str, reflected: bool = False):
    def apply(self: "Column", other: Any) -> "Column":
        a, b = (_operand(other), self.sql) if reflected else (self.sql, _operand(other))
        return Column(f"({a} {op} {b})")
    return apply


class Column:
    """A SQL expression (`col("label")`, `lit(1)`, or any SQL text via `expr`). As in PySpark,
    operators build expressions: `(col("label") == 1) & (col("p") > 0.5)`, `~c`, `c + 1`."""

    def __init__(self, sql: str, name: Optional[str] = None, select_as: Optional[str] = None):
        self.sql = sql
        self.name = name
        # The name `select` gives it (a struct field's, as Spark names `image.origin`).
        self._select_as = select_as

    def alias(self, name: str) -> "Column":
        return Column(f"{self.sql} AS {_ident(name)}", name)

    __eq__ = _binary("=")  # type: ignore[assignment]
    __ne__ = _binary("<>")  # type: ignore[assignment]
    __lt__ = _binary("<")
    __le__ = _binary("<=")
    __gt__ = _binary(">")
    __ge__ = _binary(">=")
    __add__, __radd__ = _binary("+"), _binary("+", True)
    __sub__, __rsub__ = _binary("-"), _binary("-", True)
    __mul__, __rmul__ = _binary("*"), _binary("*", True)
    __truediv__, __rtruediv__ = _binary("/"), _binary("/", True)
    __mod__ = _binary("%")
    __and__, __rand__ = _binary("AND"), _binary("AND", True)
    __or__, __ror__ = _binary("OR"), _binary("OR", True)
    __hash__ = object.__hash__

    def __invert__(self) -> "Column":
        return Column(f"(NOT {self.sql})")

    def __neg__(self) -> "Column":
        return Column(f"(- {self.sql})")

    def isNull(self) -> "Column":
        return Column(f"({self.sql} IS NULL)")

    def isNotNull(self) -> "Column":
        return Column(f"({self.sql} IS NOT NULL)")

    def isin(self, *values: Any) -> "Column":
        if len(values) == 1 and isinstance(values[0], (list, tuple, set)):
            values = tuple(values[0])
        return Column(f"({self.sql} IN ({', '.join(_operand(v) for v in values)}))")

    def __bool__(self) -> bool:
        raise ValueError(f"Cannot convert {self!r} into bool: use '&' for 'and', '|' for 'or', "
                         "'~' for 'not' when building conditions (as in PySpark)")

    def __repr__(self) -> str:
        return f"Column<{self.sql}>"


def col(name: str) -> Column:
    """A column; `a.b` is field `b` of struct column `a`, as in Spark (`image.origin`);
    a name with a dot in it is written in backticks (`` `a.b` ``)."""
    if isinstance(name, str) and name.startswith("`") and name.endswith("`") and len(name) > 2:
        return Column(_ident(name[1:-1]), name[1:-1])
    if isinstance(name, str) and "." in name.strip("."):
        head, *fields = name.split(".")
        access = _ident(head) + "".join(f"[{_string(f)}]" for f in fields)
        return Column(access, fields[-1], select_as=fields[-1])
    return Column(_ident(name), name)


def expr(sql: str) -> Column:
    """Any SQL expression, e.g. expr("image['origin']")."""
    return Column(f"({sql})")


def lit(value: Any) -> Column:
    """A literal, typed as Spark types it (int -> INT, float -> DOUBLE)."""
    if isinstance(value, bool):
        return Column("TRUE" if value else "FALSE")
    if isinstance(value, int):
        return Column(f"CAST({value} AS INT)")
    if isinstance(value, float):
        return Column(f"CAST({value!r} AS DOUBLE)")
    if isinstance(value, str):
        return Column(_string(value))
    if value is None:
        return Column("NULL")
    raise TypeError(f"lit: unsupported value {value!r} (int, float, str, bool or None)")


def _select_item(c: Union[str, Column]) -> str:
    if isinstance(c, Column):
        return f"{c.sql} AS {_ident(c._select_as)}" if c._select_as else c.sql
    if isinstance(c, str):
        return _ident(c)
    raise TypeError(f"expected column names or Columns, got {c!r}")


class DataFrame:
    """A query on the cluster; transformations give new DataFrames, actions run it."""

    def __init__(self, session, sql: str, table: Optional[pa.Table] = None):
        self._session = session
        self._sql = sql
        self._table = table
        self._schema: Optional[pa.Schema] = None

    # -- plumbing -------------------------------------------------------------------------

    @property
    def sql_text(self) -> str:
        """The query this DataFrame runs."""
        return self._sql

    def _from(self) -> str:
        return f"({self._sql}) AS t{next(_alias)}"

    def _derive(self, sql: str) -> "DataFrame":
        return DataFrame(self._session, sql)

    # -- schema ---------------------------------------------------------------------------

    @property
    def schema(self) -> pa.Schema:
        """The Arrow schema (asks the cluster to plan the query, reads no rows)."""
        if self._table is not None:
            return self._table.schema
        if self._schema is None:
            self._schema = self._session._query(f"SELECT * FROM {self._from()} LIMIT 0").schema
        return self._schema

    @property
    def columns(self) -> List[str]:
        return list(self.schema.names)

    def printSchema(self) -> None:
        print(self.schema)

    # -- transformations ------------------------------------------------------------------

    def select(self, *cols: Union[str, Column]) -> "DataFrame":
        if len(cols) == 1 and isinstance(cols[0], (list, tuple)):
            cols = tuple(cols[0])
        items = []
        for c in cols:
            if isinstance(c, str) and c != "*":
                if c in self.columns:
                    items.append(_ident(c))
                    continue
                head = c.split(".")[0]
                if "." not in c or head not in self.columns:
                    raise ValueError(f"select: no column '{c}' (columns: {', '.join(self.columns)})")
                items.append(_select_item(col(c)))
            elif isinstance(c, str):
                items.append("*")
            elif isinstance(c, Column):
                items.append(_select_item(c))
            else:
                raise TypeError(f"select: expected column names or Columns, got {c!r}")
        return self._derive(f"SELECT {', '.join(items)} FROM {self._from()}")

    def filter(self, condition: Union[str, Column]) -> "DataFrame":
        """Rows where a SQL condition holds, e.g. filter("label = 1")."""
        text = condition.sql if isinstance(condition, Column) else condition
        if not isinstance(text, str):
            raise TypeError(f"filter: expected a SQL condition (str) or Column, got {condition!r}")
        return self._derive(f"SELECT * FROM {self._from()} WHERE {text}")

    where = filter

    def limit(self, n: int) -> "DataFrame":
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise TypeError(f"limit: n must be a non-negative int, got {n!r}")
        return self._derive(f"SELECT * FROM {self._from()} LIMIT {n}")

    def withColumn(self, name: str, value: Union[Column, str]) -> "DataFrame":
        """Adds (or replaces) a column: withColumn("label", lit(1))."""
        if not isinstance(value, Column):
            raise TypeError(f"withColumn: value must be a Column (lit(...), col(...), expr(...)), got {value!r}")
        if name in self.columns:
            rest = ", ".join(
                value.sql + f" AS {_ident(c)}" if c == name else _ident(c) for c in self.columns)
            return self._derive(f"SELECT {rest} FROM {self._from()}")
        return self._derive(f"SELECT *, {value.sql} AS {_ident(name)} FROM {self._from()}")

    def withColumnRenamed(self, existing: str, new: str) -> "DataFrame":
        if existing not in self.columns:
            raise ValueError(f"withColumnRenamed: no column '{existing}' (columns: {', '.join(self.columns)})")
        items = ", ".join(
            f"{_ident(c)} AS {_ident(new)}" if c == existing else _ident(c) for c in self.columns)
        return self._derive(f"SELECT {items} FROM {self._from()}")

    def drop(self, *names: str) -> "DataFrame":
        keep = [c for c in self.columns if c not in names]
        return self._derive(f"SELECT {', '.join(map(_ident, keep))} FROM {self._from()}")

    def union(self, other: "DataFrame") -> "DataFrame":
        """Rows of both (by position, as Spark's union; duplicates kept)."""
        if not isinstance(other, DataFrame):
            raise TypeError(f"union: expected a DataFrame, got {other!r}")
        return self._derive(f"SELECT * FROM {self._from()} UNION ALL SELECT * FROM {other._from()}")

    unionAll = union

    def orderBy(self, *cols: str, ascending: bool = True) -> "DataFrame":
        order = "ASC" if ascending else "DESC"
        items = ", ".join(f"{c.sql if isinstance(c, Column) else _select_item(c)} {order}" for c in cols)
        return self._derive(f"SELECT * FROM {self._from()} ORDER BY {items}")

    sort = orderBy

    def randomSplit(self, weights: Sequence[float], seed: Optional[int] = None) -> List["DataFrame"]:
        """Spark's randomSplit, with the rows `dlp fit` puts in each part: each row's draw
        is a hash of its key (the last two path components of the image's origin, else of
        an `origin` / `path` column) and the seed, so it does not depend on partitioning."""
        if not weights or any(not isinstance(w, (int, float)) or w < 0 for w in weights):
            raise ValueError(f"randomSplit: weights must be non-negative numbers, got {weights!r}")
        total = float(sum(weights))
        if total <= 0:
            raise ValueError(f"randomSplit: the weights sum to 0 ({weights!r})")
        if seed is None:
            import random

            seed = random.getrandbits(63)
        if not isinstance(seed, int):
            raise TypeError(f"randomSplit: seed must be an int, got {seed!r}")
        names = self.columns
        if "image" in names:
            key = "image['origin']"
        elif "origin" in names:
            key = '"origin"'
        elif "path" in names:
            key = '"path"'
        else:
            raise ValueError("randomSplit needs an image column, 'origin' or 'path' to key rows on; "
                             f"columns: {', '.join(names)}")
        unit = (f"dlp_hash_unit(regexp_replace(CAST({key} AS VARCHAR), "
                f"'^.*/([^/]+/[^/]+)$', '${{1}}'), {int(seed)})")
        out, lo = [], 0.0
        for i, w in enumerate(weights):
            last = i + 1 == len(weights)
            hi = None if last else lo + float(w) / total
            cond = f"{unit} >= {lo!r}" + ("" if hi is None else f" AND {unit} < {hi!r}")
            out.append(self._derive(f"SELECT * FROM {self._from()} WHERE {cond}"))
            lo = hi if hi is not None else lo
        return out

    # -- actions --------------------------------------------------------------------------

    def to_arrow(self) -> pa.Table:
        """Runs the query; its rows as an Arrow table."""
        if self._table is not None:
            return self._table
        return self._session._query(self._sql)

    toArrow = to_arrow

    def toPandas(self):
        return self.to_arrow().to_pandas()

    def collect(self) -> List[dict]:
        """The rows, as dicts."""
        return self.to_arrow().to_pylist()

    def count(self) -> int:
        t = self._session._query(f"SELECT count(*) AS n FROM {self._from()}")
        return int(t.column(0)[0].as_py())

    def head(self, n: int = 1) -> List[dict]:
        return self.limit(n).collect()

    def show(self, n: int = 20, truncate: Union[bool, int] = True) -> None:
        """Prints the first n rows as a table (long values cut to 20 characters)."""
        rows = self.limit(n).collect()
        cols = self.columns if not rows else list(rows[0].keys())
        width = 20 if truncate is True else (int(truncate) if truncate else None)

        def cell(v):
            s = "null" if v is None else (v.hex() if isinstance(v, bytes) else str(v))
            return s if width is None or len(s) <= width else s[: max(width - 3, 1)] + "..."

        table = [[cell(r[c]) for c in cols] for r in rows]
        sizes = [max([len(c)] + [len(r[i]) for r in table]) for i, c in enumerate(cols)]
        line = "+" + "+".join("-" * s for s in sizes) + "+"
        print(line)
        print("|" + "|".join(c.rjust(s) for c, s in zip(cols, sizes)) + "|")
        print(line)
        for r in table:
            print("|" + "|".join(v.rjust(s) for v, s in zip(r, sizes)) + "|")
        print(line)

    def __repr__(self) -> str:
        return f"DataFrame<{self._sql[:80]}{'...' if len(self._sql) > 80 else ''}>"
