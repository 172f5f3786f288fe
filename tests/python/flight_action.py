"""Runs one Arrow Flight action with pyarrow and prints its results as a JSON array (each
result body parsed as JSON). Used by the Rust integration tests for the pipeline-job
actions. Credentials, when set: DLP_FLIGHT_USER and DLP_FLIGHT_PASSWORD (Basic, in the
Flight handshake); DLP_TLS_ROOT_CERTS: a CA file for grpc+tls:// URIs. On a Flight error: its class and message on stderr, exit status 1.

    flight_action.py URI TYPE [BODY]
"""
import json
import os
import sys

import pyarrow.flight as flight


def main() -> int:
    uri, kind = sys.argv[1], sys.argv[2]
    body = sys.argv[3].encode() if len(sys.argv) > 3 else b""
    roots = os.environ.get("DLP_TLS_ROOT_CERTS")
    if roots:
        with open(roots, "rb") as f:
            client = flight.FlightClient(uri, tls_root_certs=f.read())
    else:
        client = flight.FlightClient(uri)
    options = flight.FlightCallOptions()
    try:
        if "DLP_FLIGHT_USER" in os.environ:
            header = client.authenticate_basic_token(
                os.environ["DLP_FLIGHT_USER"], os.environ.get("DLP_FLIGHT_PASSWORD", ""))
            options = flight.FlightCallOptions(headers=[header])
        out = [json.loads(r.body.to_pybytes()) for r in client.do_action(flight.Action(kind, body), options)]
    except flight.FlightError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
