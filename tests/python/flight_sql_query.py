"""Runs one SQL query against a Flight SQL endpoint with the ADBC driver and prints the
rows as JSON (binary values as hex). Used by the Rust integration tests as a real client."""
import json
import sys

import adbc_driver_flightsql.dbapi as flight_sql


def main() -> None:
    uri, query = sys.argv[1], sys.argv[2]
    with flight_sql.connect(uri) as conn, conn.cursor() as cur:
        cur.execute(query)
        table = cur.fetch_arrow_table()
    rows = []
    for row in table.to_pylist():
        rows.append({k: (v.hex() if isinstance(v, (bytes, bytearray)) else v) for k, v in row.items()})
    json.dump({"columns": table.column_names, "rows": rows}, sys.stdout)


if __name__ == "__main__":
    main()
