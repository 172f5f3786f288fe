"""Runs one SQL query against a Flight SQL endpoint with the ADBC driver and prints the
rows as JSON (binary values as hex). Several statements separated by ';' run in order
in one session (the last one's rows are printed). Used by the Rust integration tests as a real client.
Credentials, when set: DLP_FLIGHT_USER and DLP_FLIGHT_PASSWORD (HTTP Basic in the Flight
handshake, as ADBC does with username/password); DLP_TLS_ROOT_CERTS: a CA file for
grpc+tls:// URIs."""
import json
import os
import sys

import adbc_driver_flightsql.dbapi as flight_sql


def main() -> None:
    uri, query = sys.argv[1], sys.argv[2]
    db_kwargs = {}
    if "DLP_FLIGHT_USER" in os.environ:
        db_kwargs["username"] = os.environ["DLP_FLIGHT_USER"]
        db_kwargs["password"] = os.environ.get("DLP_FLIGHT_PASSWORD", "")
    if os.environ.get("DLP_TLS_ROOT_CERTS"):
        with open(os.environ["DLP_TLS_ROOT_CERTS"]) as f:
            db_kwargs["adbc.flight.sql.client_option.tls_root_certs"] = f.read()
    with flight_sql.connect(uri, db_kwargs=db_kwargs) as conn, conn.cursor() as cur:
        # Several statements separated by ';' run in one session; the last one's rows.
        statements = [q for q in query.split(";") if q.strip()]
        for q in statements[:-1]:
            cur.execute(q)
            cur.fetch_arrow_table()
        cur.execute(statements[-1])
        table = cur.fetch_arrow_table()
    rows = []
    for row in table.to_pylist():
        rows.append({k: (v.hex() if isinstance(v, (bytes, bytearray)) else v) for k, v in row.items()})
    json.dump({"columns": table.column_names, "rows": rows}, sys.stdout)


if __name__ == "__main__":
    main()
