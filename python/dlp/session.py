"""Connections to a Ballista DLP scheduler: SQL over Flight SQL (ADBC) and pipeline jobs over
Arrow Flight actions, with the same credentials."""
from __future__ import annotations

import json
import os
import sys
import time
import warnings
from typing import Any, Dict, Iterator, List, Optional, Union

import pyarrow as pa
import pyarrow.flight as flight

from .errors import DlpError, JobCancelled, JobFailed

_DDL = ("create", "drop", "set", "copy", "insert", "reset")


def _flight_uri(uri: str) -> str:
    """`df://` / `df+tls://` (the dlp CLI's scheme) as Flight's `grpc://` / `grpc+tls://`."""
    for ours, theirs in (("df+tls://", "grpc+tls://"), ("df://", "grpc://")):
        if uri.startswith(ours):
            return theirs + uri[len(ours):]
    if not uri.startswith(("grpc://", "grpc+tcp://", "grpc+tls://")):
        raise ValueError(
            f"connect: uri '{uri}' must be grpc://host:port or grpc+tls://host:port "
            "(df:// and df+tls:// are accepted too)")
    return uri


def connect(uri: Optional[str] = None, user: Optional[str] = None,
            password: Optional[str] = None, tls_root_certs: Union[str, bytes, None] = None,
            models_dir: str = "dlp-models", progress: Optional[bool] = None) -> "Session":
    """Opens a session on a dlp-scheduler.

    uri: `grpc://host:port` or `grpc+tls://host:port` (default: $DLP_SCHEDULER, as the dlp
    CLI reads it, else grpc://127.0.0.1:50050). user / password: the scheduler's
    credentials (defaults: $DLP_USER and $DLP_PASSWORD). tls_root_certs: the CA
    certificate (PEM bytes or a file path) of a TLS scheduler (default: $DLP_TLS_CA).
    models_dir: where fitted models go on the cluster (relative paths are taken from the
    scheduler's first writable root). progress: show job progress (default: when stderr
    is a terminal or in Jupyter)."""
    uri = uri or os.environ.get("DLP_SCHEDULER") or "grpc://127.0.0.1:50050"
    user = user or os.environ.get("DLP_USER") or None
    tls_root_certs = tls_root_certs or os.environ.get("DLP_TLS_CA") or None
    return Session(uri, user, password, tls_root_certs, models_dir, progress)


class Session:
    """A connection to a cluster. `sql()` and `read_images()` give lazy DataFrames; estimators'
    `fit` runs as a pipeline job on the cluster."""

    def __init__(self, uri, user=None, password=None, tls_root_certs=None,
                 models_dir="dlp-models", progress=None):
        import adbc_driver_flightsql.dbapi as flight_sql

        self.uri = _flight_uri(uri)
        self.user = user
        if password is None and user is not None:
            password = os.environ.get("DLP_PASSWORD")
            if password is None:
                raise ValueError("connect: password not given and $DLP_PASSWORD is not set")
        self._password = password
        certs = tls_root_certs
        if isinstance(certs, str) and not certs.lstrip().startswith("-----BEGIN"):
            with open(certs, "rb") as f:
                certs = f.read()
        if isinstance(certs, str):
            certs = certs.encode()
        self._certs = certs
        self.models_dir = models_dir.rstrip("/")
        self.progress = progress
        kwargs = {"tls_root_certs": certs} if certs else {}
        self._flight = flight.FlightClient(self.uri, **kwargs)
        self._headers: List = []
        self._login()
        db_kwargs: Dict[str, str] = {}
        if user is not None:
            db_kwargs["username"] = user
            db_kwargs["password"] = password or ""
        if certs:
            db_kwargs["adbc.flight.sql.client_option.tls_root_certs"] = certs.decode()
        def connect_sql():
            # Flight SQL has no transactions: the driver's DB-API warning about autocommit
            # says nothing a user can act on.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Cannot disable autocommit")
                return flight_sql.connect(self.uri, db_kwargs=db_kwargs)

        self._connect_sql = connect_sql
        try:
            self._conn = self._connect_sql()
        except Exception as e:  # noqa: BLE001 - the driver's errors carry the server's message
            raise DlpError(f"connect: {self.uri}: {e}") from e

    # -- Flight actions -------------------------------------------------------------------

    def _login(self) -> None:
        if self.user is None:
            self._headers = []
            return
        try:
            header = self._flight.authenticate_basic_token(self.user, self._password or "")
        except flight.FlightUnauthenticatedError as e:
            raise DlpError(f"login as '{self.user}' at {self.uri} failed: {_message(e)}") from e
        except flight.FlightUnavailableError as e:
            raise DlpError(f"cannot reach the scheduler at {self.uri}: {_message(e)}") from e
        except flight.FlightError as e:
            # (A wrong port or a TLS mismatch reaches here as "Could not finish writing before
            # closing", which names neither.)
            tls = "grpc+tls://" in self.uri
            hint = ("the scheduler's certificate must be signed by tls_root_certs" if tls else
                    "a scheduler with TLS needs grpc+tls:// and tls_root_certs")
            raise DlpError(f"cannot log in as '{self.user}' at {self.uri}: {_message(e)} "
                           f"(is a scheduler listening there? {hint})") from e
        self._headers = [header]

    def _options(self, timeout: Optional[float] = None) -> flight.FlightCallOptions:
        return flight.FlightCallOptions(headers=self._headers, timeout=timeout)

    def _actions(self, kind: str, body: Union[str, bytes] = b"",
                 timeout: Optional[float] = 60) -> Iterator[Any]:
        """The JSON results of a Flight action (logs in again once when the token expired)."""
        if isinstance(body, str):
            body = body.encode()
        for attempt in (0, 1):
            try:
                results = self._flight.do_action(flight.Action(kind, body), self._options(timeout))
                first = next(results, None)
                if first is None:
                    return
                yield json.loads(first.body.to_pybytes())
                for r in results:
                    yield json.loads(r.body.to_pybytes())
                return
            except flight.FlightUnauthenticatedError as e:
                if attempt == 0 and self.user is not None:
                    self._login()
                    continue
                raise DlpError(f"{kind}: {_message(e)}") from e
            except (flight.FlightError, pa.ArrowException) as e:
                # The scheduler's refusals (INVALID_ARGUMENT comes back as ArrowInvalid).
                raise DlpError(f"{kind}: {_message(e)}") from e

    def _action(self, kind: str, body: Union[str, bytes] = b"") -> Any:
        results = list(self._actions(kind, body))
        if len(results) != 1:
            raise DlpError(f"{kind}: expected one answer, got {len(results)}")
        return results[0]

    # -- SQL ------------------------------------------------------------------------------

    def _query(self, sql: str) -> pa.Table:
        for attempt in (0, 1):
            try:
                with self._conn.cursor() as cur:
                    cur.execute(sql)
                    return cur.fetch_arrow_table()
            except Exception as e:  # noqa: BLE001 - ADBC raises its own error classes
                text = str(e)
                if attempt == 0 and ("Unauthenticated" in text or "UNAUTHENTICATED" in text):
                    self._conn.close()
                    self._conn = self._connect_sql()
                    continue
                raise DlpError(_clean(text)) from e
        raise AssertionError("unreachable")

    def sql(self, query: str) -> "DataFrame":
        """A DataFrame of a query. DDL and other statements (CREATE FUNCTION, CREATE
        EXTERNAL TABLE, SET, COPY) run at once, as spark.sql does."""
        from .dataframe import DataFrame

        if query.lstrip().lower().startswith(_DDL):
            table = self._query(query)
            return DataFrame(self, query, table=table)
        return DataFrame(self, query)

    def read_images(self, path: str, withLabel: bool = False, dropInvalid: bool = False,
                    recursiveFileLookup: Optional[bool] = None,
                    pathGlobFilter: Optional[str] = None, sampleRatio: Optional[float] = None,
                    seed: Optional[int] = None, numPartitions: Optional[int] = None,
                    **options: Any) -> "DataFrame":
        """Spark's `spark.read.format("image")` on the cluster (read_images in SQL): paths
        are the cluster's (relative ones from its first data root). Other read_images
        options (batchSize, maxPixels, decodeWebp) go as keywords."""
        from .dataframe import DataFrame, _string

        given = dict(withLabel=withLabel, dropInvalid=dropInvalid,
                     recursiveFileLookup=recursiveFileLookup, pathGlobFilter=pathGlobFilter,
                     sampleRatio=sampleRatio, seed=seed, numPartitions=numPartitions)
        allowed = {"batchSize", "maxPixels", "decodeWebp"}
        for name in options:
            if name not in allowed:
                raise TypeError(f"read_images() got an unexpected option '{name}' "
                                f"(options: {', '.join(sorted([*given, *allowed]))})")
        given.update(options)
        args = [_string(path)]
        for name, value in given.items():
            if value is None or (value is False and name in ("withLabel", "dropInvalid")):
                continue
            if isinstance(value, bool):
                value = str(value).lower()
            args.append(_string(f"{name}={value}"))
        return DataFrame(self, f"SELECT * FROM read_images({', '.join(args)})")

    # -- jobs -----------------------------------------------------------------------------

    def submit(self, spec: Union[str, Dict[str, Any]], wait: bool = True,
               what: str = "job") -> Dict[str, Any]:
        """Submits a job spec (YAML text, a path to a YAML file, or a dict) and, with
        `wait`, follows it to its end with progress; Ctrl-C cancels it on the cluster.
        Returns the final status (a failed or cancelled job raises JobFailed /
        JobCancelled)."""
        if isinstance(spec, dict):
            text = json.dumps(spec)
        elif "\n" not in spec and os.path.exists(spec):
            with open(spec) as f:
                text = f.read()
        else:
            text = spec
        status = self._action("dlp.pipeline.submit", text)
        if not wait:
            return status
        return self.wait(status["job_id"], what)

    def wait(self, job_id: str, what: str = "job") -> Dict[str, Any]:
        """Follows a job to its end (progress shown); Ctrl-C cancels it on the cluster."""
        from .progress import Progress

        bar = Progress(f"{what} {job_id}", self.progress)
        status: Dict[str, Any] = {}
        try:
            while True:
                for status in self._actions("dlp.pipeline.watch", job_id, timeout=None):
                    bar.update(status)
                if status.get("state") != "running":
                    break
        except KeyboardInterrupt:
            bar.close()
            try:
                self._action("dlp.pipeline.cancel", job_id)
                print(f"dlp: cancelled {job_id} on the cluster", file=sys.stderr)
            finally:
                raise
        bar.close()
        state = status.get("state")
        if state == "succeeded":
            return status
        if state == "cancelled":
            raise JobCancelled(f"{what} {job_id} was cancelled", status)
        raise JobFailed(f"{what} {job_id} failed: {status.get('error')}", status)

    def status(self, job_id: str) -> Dict[str, Any]:
        return self._action("dlp.pipeline.status", job_id)

    def cancel(self, job_id: str) -> Dict[str, Any]:
        return self._action("dlp.pipeline.cancel", job_id)

    def jobs(self) -> List[Dict[str, Any]]:
        """The caller's pipeline jobs, oldest first."""
        return self._action("dlp.pipeline.list")

    def close(self) -> None:
        self._conn.close()
        self._flight.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _message(e: Exception) -> str:
    """A Flight error's message without gRPC's decoration."""
    text = str(e)
    for prefix in ("Flight returned invalid argument error, with message: ",
                   "Flight returned not found error, with message: "):
        text = text.replace(prefix, "")
    return _clean(text)


def _clean(text: str) -> str:
    text = text.split("gRPC client debug context")[0]
    text = text.split(". Client context:")[0]
    return text.strip().rstrip(".")
