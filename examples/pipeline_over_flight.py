"""Submits a pipeline job spec (YAML) to a dlp-scheduler over Arrow Flight, follows its
progress and prints its metrics. Needs nothing but pyarrow.

    DLP_FLIGHT_PASSWORD=... python examples/pipeline_over_flight.py \\
        --uri grpc://127.0.0.1:50050 --user alice examples/flowers-flight.yaml

Progress goes to stderr; the job's final status (JSON, with `result.metrics` and
`result.model`) goes to stdout. Ctrl-C cancels the job. The exit status is 0 only when the
job succeeded.
"""
import argparse
import json
import os
import sys

import pyarrow.flight as flight


def action(client, options, kind, body=b""):
    """Runs a Flight action; yields each result as parsed JSON."""
    for result in client.do_action(flight.Action(kind, body), options):
        yield json.loads(result.body.to_pybytes())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="YAML job spec (paths relative to the scheduler's data root)")
    parser.add_argument("--uri", default="grpc://127.0.0.1:50050")
    parser.add_argument("--user", help="user name; the password comes from DLP_FLIGHT_PASSWORD")
    parser.add_argument("--tls-root-certs", help="CA certificate (PEM) of a grpc+tls:// scheduler")
    args = parser.parse_args()

    if args.tls_root_certs:
        with open(args.tls_root_certs, "rb") as f:
            client = flight.FlightClient(args.uri, tls_root_certs=f.read())
    else:
        client = flight.FlightClient(args.uri)
    options = flight.FlightCallOptions()
    if args.user:
        header = client.authenticate_basic_token(args.user, os.environ.get("DLP_FLIGHT_PASSWORD", ""))
        options = flight.FlightCallOptions(headers=[header])

    with open(args.spec, "rb") as f:
        spec = f.read()
    [status] = action(client, options, "dlp.pipeline.submit", spec)
    job = status["job_id"]
    print(f"submitted {job} ({status['mode']})", file=sys.stderr)

    shown = 0
    try:
        for status in action(client, options, "dlp.pipeline.watch", job.encode()):
            events = status["events"]
            for e in events[shown:]:
                print(f"[{e['at_s']:7.1f} s] {e['message']}", file=sys.stderr)
            shown = len(events)
            progress = []
            if status.get("fits_total"):
                progress.append(f"fits {status['fits_done']}/{status['fits_total']}")
            if status.get("running_stages"):
                done, total = status["running_stages"]
                progress.append(f"Ballista job {status['ballista_jobs']}: {done}/{total} stages done")
            if progress and status["state"] == "running":
                print(f"          {status['elapsed_s']:.1f} s: " + ", ".join(progress), file=sys.stderr)
    except KeyboardInterrupt:
        [status] = action(client, options, "dlp.pipeline.cancel", job.encode())
        print(f"cancelled {job}", file=sys.stderr)

    if status["state"] == "succeeded":
        r = status["result"]
        print(f"{r['metricName']} = {r['metric']:.4f} on the test split "
              f"({sum(r['testCounts'])} images); model: {r['model']}", file=sys.stderr)
    else:
        print(f"{job} {status['state']}: {status.get('error')}", file=sys.stderr)
    json.dump(status, sys.stdout)
    print()
    return 0 if status["state"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
