"""A gateway process whose memory index cannot be saved at shutdown still stops cleanly.

The index is saved as the process stops (SIGTERM); a failing save (the disk, here a file where
the index directory was) is logged and the process exits 0: the next start brings the last saved
index up to date from the store. It used to raise out of the app's cleanup: exit status 1.
"""

from __future__ import annotations

import json
import textwrap
import urllib.request
from pathlib import Path

from gateway.testing.process import start

POLICY = textwrap.dedent(
    """\
    version: 1
    auth: {mode: open}
    providers:
      unused:
        kind: openai
        base_url: http://127.0.0.1:9/v1
    models:
      chat:
        deployments:
          - {provider: unused, model: upstream-chat}
    """
)


def post(url: str, body: object) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=20) as resp:
        return int(resp.status)


def test_an_index_that_cannot_be_saved_at_shutdown_is_logged_and_the_exit_is_clean(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    gateway = start(
        ["serve", "--policy", str(policy), "--port", "0"],
        cwd=str(tmp_path),
        env={"SOPHIA_LOG_FORMAT": "text"},
    )
    try:
        memory = {"namespace": "notes", "content": "the launch is in May", "embedding": [1.0, 0.0, 0.5]}
        assert post(gateway.url + "/v1/memory", memory) == 201
        index_dir = tmp_path / "data" / "memory-index"
        index_dir.rename(tmp_path / "data" / "memory-index-moved")
        index_dir.write_text("not a directory")  # every save fails, even as root
    finally:
        status = gateway.stop()
    assert status == 0, gateway.output
    assert "could not save the memory index at shutdown" in gateway.output
