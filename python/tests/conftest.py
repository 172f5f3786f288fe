"""The Python client's tests run against a live cluster that tests/tests/python_client.rs
starts (a dlp-scheduler with authentication and two dlp-executors on loopback) and describes
in the environment:

  DLP_TEST_URI       grpc://127.0.0.1:PORT
  DLP_TEST_USER      a user of the scheduler; DLP_PASSWORD: the password
  DLP_TEST_DATA      ../shared/data (the cluster's first data root)
  DLP_TEST_OUT       the cluster's writable root
  DLP_TEST_DLP       the dlp CLI binary (for the embedded reference runs)
"""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "examples", "python"))

import dlp  # noqa: E402


def env(name):
    value = os.environ.get(name)
    if not value:
        pytest.skip(f"{name} is not set: these tests run from tests/tests/python_client.rs (make test)")
    return value


@pytest.fixture(scope="session")
def cluster():
    return {
        "uri": env("DLP_TEST_URI"),
        "user": env("DLP_TEST_USER"),
        "password": env("DLP_PASSWORD"),
        "data": env("DLP_TEST_DATA"),
        "out": env("DLP_TEST_OUT"),
        "dlp": env("DLP_TEST_DLP"),
    }


@pytest.fixture(scope="session")
def session(cluster):
    s = dlp.connect(cluster["uri"], user=cluster["user"], password=cluster["password"], progress=False)
    yield s
    s.close()
