"""The README's Python quick start, run as written; only the scheduler's address is the
test cluster's instead of localhost:50050."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def quick_start():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text.split("## Python: the `dlp` package", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 15, "the quick start is at most 15 lines"
    return code


def test_the_readme_quick_start_runs_as_written(cluster):
    code = quick_start().replace("grpc://localhost:50050", cluster["uri"])
    assert 'user="alice"' in code and cluster["user"] == "alice"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, DLP_PASSWORD=cluster["password"]))
    assert out.returncode == 0, out.stderr
    accuracy = float(re.search(r"accuracy (\d\.\d+)", out.stdout).group(1))
    assert accuracy >= 0.97, out.stdout
