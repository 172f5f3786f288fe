"""Load generator for the Flight SQL service: N concurrent clients (one process and one ADBC
connection each) run a mix of named queries and the results, errors and latencies of every
query are printed as one JSON object (the Rust load test checks them; run by hand it is a
small benchmark of a deployed scheduler).

    flight_sql_load.py URI --query NAME=SQL ... --mix NAME=COUNT,... [--clients N] [--seed S]

Each client runs COUNT queries of every NAME, in its own shuffled order (seeded), back to
back on its connection; all clients start together after connecting. Credentials, when
set: DLP_FLIGHT_USER and DLP_FLIGHT_PASSWORD (HTTP Basic in the Flight handshake).

Output: {"clients", "wall_s", "throughput_qps", "summary": {NAME|"all": {"n", "errors",
"p50_s", "p95_s", "max_s"}}, "queries": [{"client", "seq", "kind", "start_s",
"latency_s", "error", "columns", "rows"}]} with binary values as hex. Latency is from
execute to the last fetched batch; wall time from the common start to the last answer.
"""
import argparse
import json
import math
import multiprocessing as mp
import os
import queue
import random
import sys
import threading
import time
import warnings


def percentile(values, q):
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def plain(value):
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def client(index, uri, queries, schedule, barrier, results):
    warnings.filterwarnings("ignore", message="Cannot disable autocommit")
    import adbc_driver_flightsql.dbapi as flight_sql

    db_kwargs = {}
    if "DLP_FLIGHT_USER" in os.environ:
        db_kwargs["username"] = os.environ["DLP_FLIGHT_USER"]
        db_kwargs["password"] = os.environ.get("DLP_FLIGHT_PASSWORD", "")
    out = []
    try:
        conn = flight_sql.connect(uri, db_kwargs=db_kwargs)
    except Exception as e:  # noqa: BLE001 - reported, the other clients go on
        barrier.wait(timeout=300)
        results.put((index, [{"client": index, "seq": 0, "kind": "connect",
                              "start_s": time.monotonic(), "latency_s": 0.0,
                              "error": f"{type(e).__name__}: {e}"}]))
        return
    barrier.wait(timeout=300)
    with conn:
        for seq, kind in enumerate(schedule):
            start = time.monotonic()
            record = {"client": index, "seq": seq, "kind": kind, "start_s": start}
            try:
                with conn.cursor() as cur:
                    cur.execute(queries[kind])
                    table = cur.fetch_arrow_table()
                record["latency_s"] = time.monotonic() - start
                record["error"] = None
                record["columns"] = table.column_names
                record["rows"] = [plain(r) for r in table.to_pylist()]
            except Exception as e:  # noqa: BLE001 - every failure is reported
                record["latency_s"] = time.monotonic() - start
                record["error"] = f"{type(e).__name__}: {e}"
            out.append(record)
    results.put((index, out))


def summarize(records):
    ok = [r["latency_s"] for r in records if r["error"] is None]
    return {
        "n": len(records),
        "errors": sum(r["error"] is not None for r in records),
        "p50_s": percentile(ok, 50) if ok else None,
        "p95_s": percentile(ok, 95) if ok else None,
        "max_s": max(ok) if ok else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("uri")
    parser.add_argument("--query", action="append", required=True, metavar="NAME=SQL")
    parser.add_argument("--mix", required=True, metavar="NAME=COUNT,...")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    queries = dict(q.split("=", 1) for q in args.query)
    mix = [(name, int(n)) for name, n in (m.split("=") for m in args.mix.split(","))]
    unknown = [name for name, _ in mix if name not in queries]
    if unknown:
        sys.exit(f"--mix names queries that were not given: {unknown}")

    ctx = mp.get_context("spawn")  # the ADBC driver runs Go: never fork it
    barrier = ctx.Barrier(args.clients + 1)
    results = ctx.Queue()
    workers = []
    for i in range(args.clients):
        schedule = [name for name, n in mix for _ in range(n)]
        random.Random(args.seed * 1000 + i).shuffle(schedule)
        p = ctx.Process(target=client, args=(i, args.uri, queries, schedule, barrier, results))
        p.start()
        workers.append(p)
    try:
        barrier.wait(timeout=300)
    except threading.BrokenBarrierError:
        for p in workers:
            p.kill()
        sys.exit("the clients did not all start (see their errors above)")
    started = time.monotonic()
    records, done = [], set()
    # Drain before join (a child blocks until its queue data is read); a client that died
    # without answering is reported as one failed query.
    while len(done) < len(workers):
        try:
            index, out = results.get(timeout=1)
        except queue.Empty:
            for i, p in enumerate(workers):
                if i not in done and p.exitcode not in (None, 0):
                    done.add(i)
                    records.append({"client": i, "seq": 0, "kind": "client",
                                    "start_s": started, "latency_s": 0.0,
                                    "error": f"client process exited with {p.exitcode}"})
            continue
        done.add(index)
        records.extend(out)
    for p in workers:
        p.join()
    finished = max([r["start_s"] + r["latency_s"] for r in records], default=started)
    for r in records:
        r["start_s"] -= started
    records.sort(key=lambda r: (r["client"], r["seq"]))
    wall = finished - started
    kinds = sorted({r["kind"] for r in records})
    summary = {k: summarize([r for r in records if r["kind"] == k]) for k in kinds}
    summary["all"] = summarize(records)
    json.dump({
        "clients": args.clients,
        "wall_s": wall,
        "throughput_qps": len(records) / wall if wall > 0 else None,
        "summary": summary,
        "queries": records,
    }, sys.stdout)


if __name__ == "__main__":
    main()
