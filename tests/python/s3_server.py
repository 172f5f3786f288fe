"""An S3-compatible server on loopback for the object-storage tests: moto's server mode
(real HTTP, SigV4 request signing checked, paginated listing), with request
authentication on.

Usage: python s3_server.py PORT [BUCKET=DIR[:PREFIX] ...]

Starts the server on 127.0.0.1:PORT, makes an IAM user allowed s3:* and an access key for
it (every later request must be signed with that key: a wrong secret is refused), creates
the buckets and uploads each DIR under PREFIX, then prints one JSON line
{"port", "access_key_id", "secret_access_key", "objects"} and serves until its parent
process exits (so a test that dies leaves no server behind) or stdin closes.
"""
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

# Request authentication: the first three actions (the IAM set-up below) are let through,
# every later one is checked against the IAM users' keys and policies.
os.environ.setdefault("INITIAL_NO_AUTH_ACTION_COUNT", "3")

import boto3  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402


def main():
    port = int(sys.argv[1])
    parent = os.getppid()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="setup", aws_secret_access_key="setup")
    iam.create_user(UserName="dlp")
    iam.put_user_policy(UserName="dlp", PolicyName="s3", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }))
    key = iam.create_access_key(UserName="dlp")["AccessKey"]
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id=key["AccessKeyId"],
                      aws_secret_access_key=key["SecretAccessKey"])
    objects = 0
    made = set()
    for arg in sys.argv[2:]:
        bucket, spec = arg.split("=", 1)
        local, _, prefix = spec.partition(":")
        if bucket not in made:
            s3.create_bucket(Bucket=bucket)
            made.add(bucket)
        if not local:
            continue
        files = []
        for d, _, names in os.walk(local):
            for n in names:
                path = os.path.join(d, n)
                rel = os.path.relpath(path, local).replace(os.sep, "/")
                files.append((path, f"{prefix.strip('/')}/{rel}" if prefix.strip("/") else rel))
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda f: s3.upload_file(f[0], bucket, f[1]), files))
        objects += len(files)
    print(json.dumps({"port": port, "access_key_id": key["AccessKeyId"],
                      "secret_access_key": key["SecretAccessKey"], "objects": objects}),
          flush=True)

    def stdin_closed():
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=stdin_closed, daemon=True).start()
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


if __name__ == "__main__":
    main()
