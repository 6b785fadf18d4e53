"""A running gateway's policy file saved the ways editors, tools and Kubernetes save it.

One real gateway process (``serve --policy`` on a tmp path, the file watcher on) and one fake
provider for the module. Each case edits the file as a tool would (vim's backup-and-write, ``sed
-i``, ``cp``, ``git checkout``, a write in two steps, a kubelet ConfigMap ``..data`` swap, ...)
and waits, polling with a deadline, until the gateway serves the version written, or says it
refused it; at the end of each case the last valid version serves, the gateway still runs,
each refusal is said once in its log and counted once in ``gateway_policy_reloads_total``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.testing.process import ManagedProcess, start

DEADLINE_S = 6.0
REFUSED = "policy reload refused"


def policy(fake_url: str, marker: str, *, extra: str = "") -> str:
    """Every version serves ``chat`` and a group named ``marker``."""
    return (
        "version: 1\nauth: {mode: open}\n"
        f"providers:\n  fake: {{kind: openai, base_url: {fake_url}/v1}}\n"
        "models:\n"
        "  chat: {deployments: [{provider: fake, model: upstream-chat}]}\n"
        f"  {marker}: {{deployments: [{{provider: fake, model: upstream-{marker}}}]}}\n" + extra
    )


class Gateway:
    def __init__(self, proc: ManagedProcess, path: Path, fake_url: str) -> None:
        self.proc, self.path, self.fake_url = proc, path, fake_url

    def get(self, route: str) -> dict[str, object]:
        with urllib.request.urlopen(f"{self.proc.url}{route}", timeout=10) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    def served(self) -> list[str]:
        return [m["id"] for m in self.get("/v1/models")["data"]]  # type: ignore[attr-defined]

    def until(self, what: str, done: Callable[[], bool], deadline_s: float = DEADLINE_S) -> None:
        deadline = time.monotonic() + deadline_s
        while not done():
            assert self.proc.popen.poll() is None, f"the gateway exited:\n{self.proc.output[-3000:]}"
            assert time.monotonic() < deadline, (
                f"{what}: not within {deadline_s} s\n{self.proc.output[-3000:]}"
            )
            time.sleep(0.02)

    def wait_served(self, marker: str) -> None:
        self.until(f"{marker} served", lambda: marker in self.served())

    def refusals_logged(self) -> int:
        return self.proc.output.count(REFUSED)

    def reloads(self) -> dict[str, float]:
        with urllib.request.urlopen(f"{self.proc.url}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith('gateway_policy_reloads_total{result="'):
                result = line.split('"')[1]
                if float(line.rsplit(" ", 1)[1]):
                    out[result] = float(line.rsplit(" ", 1)[1])
        return out

    def wait_refused(self, before: int) -> dict[str, object]:
        """Waits for one more refusal in the log than ``before``; the policy check of /health."""
        self.until("refusal logged", lambda: self.refusals_logged() > before)
        health = self.get("/health")
        check = health["dependencies"]["policy"]  # type: ignore[index]
        assert check["status"] == "degraded", health
        return check  # type: ignore[no-any-return]

    def health_policy(self) -> str:
        return self.get("/health")["dependencies"]["policy"]["status"]  # type: ignore[index,no-any-return]

    def quiet(self) -> None:
        """Until the watcher and the poll have both looked at what was written last: a settle
        read and a poll round (2 s) at most, plus the debounce. Measured, not slept: it waits for
        the metric and log to stop moving for longer than a poll."""
        last = (self.reloads(), self.refusals_logged())
        stable_since = time.monotonic()
        deadline = stable_since + 10
        while time.monotonic() - stable_since < 2.6:
            assert time.monotonic() < deadline, "reloads never settled"
            time.sleep(0.1)
            now = (self.reloads(), self.refusals_logged())
            if now != last:
                last, stable_since = now, time.monotonic()


@pytest.fixture(scope="module")
def fake() -> Iterator[ManagedProcess]:
    proc = start(["fake-provider", "--port", "0"])
    yield proc
    proc.stop()


@pytest.fixture
def gw(fake: ManagedProcess, tmp_path: Path) -> Iterator[Gateway]:
    path = tmp_path / "policy.yaml"
    path.write_text(policy(fake.url, "v0"))
    proc = start(["serve", "--policy", str(path), "--port", "0"], env={"SOPHIA_ACCESS_LOG": "0"})
    gateway = Gateway(proc, path, fake.url)
    try:
        gateway.wait_served("v0")
        yield gateway
    finally:
        assert proc.stop() == 0, proc.output[-3000:]


def test_editors_and_tools_saving_the_file(gw: Gateway, tmp_path: Path) -> None:
    path, url = gw.path, gw.fake_url
    # vim (backupcopy=no): its writability probe "4913", the file renamed to a backup, a swap
    # file beside it, the new file written in place of the old.
    (tmp_path / ".policy.yaml.swp").write_bytes(b"\x00" * 4096)
    probe = tmp_path / "4913"
    probe.write_text("")
    probe.unlink()
    os.replace(path, tmp_path / "policy.yaml~")
    with open(path, "w") as f:
        f.write(policy(url, "vim"))
    gw.wait_served("vim")
    (tmp_path / ".policy.yaml.swp").unlink()
    (tmp_path / "policy.yaml~").unlink()

    # sed -i: a temporary file beside it renamed over it.
    subprocess.run(["sed", "-i", "s/vim/sed/g", str(path)], check=True)
    gw.wait_served("sed")

    # cp over it (truncate then write, the same inode).
    other = tmp_path / "elsewhere.yaml"
    other.write_text(policy(url, "copied"))
    shutil.copyfile(other, path)
    gw.wait_served("copied")

    # git checkout of another version.
    repo = tmp_path
    git = ["git", "-C", str(repo), "-c", "user.email=a@b", "-c", "user.name=a"]
    subprocess.run([*git, "init", "-q"], check=True)
    path.write_text(policy(url, "first"))
    subprocess.run([*git, "add", "policy.yaml"], check=True)
    subprocess.run([*git, "commit", "-qm", "first"], check=True)
    gw.wait_served("first")
    path.write_text(policy(url, "second"))
    subprocess.run([*git, "commit", "-qam", "second"], check=True)
    gw.wait_served("second")
    subprocess.run([*git, "checkout", "-q", "HEAD~1", "--", "policy.yaml"], check=True)
    gw.wait_served("first")

    assert gw.refusals_logged() == 0, gw.proc.output[-3000:]  # no save was seen half done
    # Deleted, then written again a while later: refused while gone, served when back.
    before = gw.refusals_logged()
    path.unlink()
    check = gw.wait_refused(before)
    assert "cannot read file" in str(check["detail"]) + str(check["problems"])
    assert "first" in gw.served()
    path.write_text(policy(url, "back"))
    gw.wait_served("back")
    assert gw.health_policy() == "up"
    gw.quiet()
    assert gw.refusals_logged() == before + 1
    # vim, sed, copied, first, second, first, back: each save counted once.
    assert gw.reloads() == {"applied": 7, "invalid": 1}, gw.reloads()


def test_a_write_in_two_steps_serves_only_the_whole_file(gw: Gateway) -> None:
    path, url = gw.path, gw.fake_url
    whole = policy(url, "whole")
    # Truncated, then written in two halves with a pause: the first half alone is valid YAML
    # and a valid policy (it stops before the group "whole"), the state a reader must not serve.
    cut = whole.index("  whole:")
    with open(path, "w") as f:
        f.write(whole[:cut])
        f.flush()
        time.sleep(0.1)  # the pause between an editor's two writes (not a wait for the gateway)
        f.write(whole[cut:])
    gw.wait_served("whole")
    assert gw.reloads().get("applied") == 1, gw.reloads()  # the half was never applied


def test_a_configmap_mount_updated_twice(fake: ManagedProcess, tmp_path: Path) -> None:
    # The kubelet's layout: policy.yaml -> ..data/policy.yaml, ..data -> ..<timestamp>; an update
    # writes a new timestamped directory, points ..data_tmp at it, renames ..data_tmp over ..data
    # and removes the old directory.
    mount = tmp_path / "config"
    mount.mkdir()
    stamps = [
        "..2026_12_06_23_00_00.000000001",
        "..2026_12_06_23_05_00.000000002",
        "..2026_12_06_23_10_00.000000003",
    ]

    def publish(stamp: str, text: str, old: str | None) -> None:
        (mount / stamp).mkdir()
        (mount / stamp / "policy.yaml").write_text(text)
        os.symlink(stamp, mount / "..data_tmp")
        os.rename(mount / "..data_tmp", mount / "..data")
        if old is not None:
            shutil.rmtree(mount / old)

    publish(stamps[0], policy(fake.url, "cm0"), None)
    os.symlink("..data/policy.yaml", mount / "policy.yaml")
    proc = start(
        ["serve", "--policy", str(mount / "policy.yaml"), "--port", "0"], env={"SOPHIA_ACCESS_LOG": "0"}
    )
    gw = Gateway(proc, mount / "policy.yaml", fake.url)
    try:
        gw.wait_served("cm0")
        publish(stamps[1], policy(fake.url, "cm1"), stamps[0])
        gw.wait_served("cm1")
        publish(stamps[2], policy(fake.url, "cm2"), stamps[1])
        gw.wait_served("cm2")
        assert gw.get("/admin/policy")["watching"] is True, proc.output[-3000:]
        assert gw.reloads() == {"applied": 2}, gw.reloads()
        assert gw.refusals_logged() == 0, proc.output[-3000:]
    finally:
        assert proc.stop() == 0, proc.output[-3000:]


# Valid YAML (or nearly) that hurts: each is refused, said once, the policy in force serves on.
HURTFUL = {
    "billion laughs": "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)),
    "python tag": "version: 1\nmodels: !!python/object/apply:os.system ['touch /tmp/pwned-h-policy2']\n",
    "tab indentation": "version: 1\nproviders:\n\tfake: {kind: openai}\n",
    "duplicate keys": None,  # built from the valid policy below
    "merge key onto nothing": "version: 1\n<<: *nowhere\n",
    "deeply nested": "models: " + "[" * 5000 + "]" * 5000 + "\n",
}


def test_yaml_that_hurts_is_refused_once_each(gw: Gateway) -> None:
    url = gw.fake_url
    for name, text in HURTFUL.items():
        if text is None:
            text = policy(url, "dup") + "  dup: {deployments: [{provider: fake, model: other}]}\n"
        before = gw.refusals_logged()
        gw.path.write_text(text)
        check = gw.wait_refused(before)
        assert check["problems"], (name, check)
        assert "v0" in gw.served(), name
    assert not os.path.exists("/tmp/pwned-h-policy2")
    # A merge key that is fine is served.
    merged = policy(url, "merged").replace(
        "  merged: {deployments: [{provider: fake, model: upstream-merged}]}\n",
        "  base: &base {deployments: [{provider: fake, model: upstream-merged}]}\n  merged: {<<: *base}\n",
    )
    gw.path.write_text(merged)
    gw.wait_served("merged")
    gw.quiet()
    assert gw.refusals_logged() == len(HURTFUL)
    assert gw.reloads() == {"invalid": len(HURTFUL), "applied": 1}, gw.reloads()


def save_many(gw: Gateway, texts: list[str]) -> None:
    """Saves 30 ms apart, by rename and in place in turn."""
    for i, text in enumerate(texts):
        if i % 2:
            tmp = gw.path.with_name(".policy.yaml.tmp")
            tmp.write_text(text)
            os.replace(tmp, gw.path)
        else:
            gw.path.write_text(text)
        time.sleep(0.03)  # the pace of the saves being probed


def test_many_saves_in_quick_succession_end_on_the_last_one(gw: Gateway) -> None:
    url = gw.fake_url
    broken = "version: 1\nmodels: [\n"
    # Thirty saves, every third one invalid, the last valid: the last one serves, nothing
    # before it was refused (no two reads of an invalid one agreed).
    # (Each invalid save differs: the same bytes read twice 0.25 s apart, from two saves, pass
    # for a settled file.)
    save_many(gw, [policy(url, f"q{i}") if i % 3 or i == 29 else f"# {i}\n{broken}" for i in range(30)])
    gw.wait_served("q29")
    assert gw.refusals_logged() == 0, gw.proc.output[-3000:]
    assert gw.health_policy() == "up"
    applied = gw.reloads()["applied"]
    # Thirty more, the last invalid: q29 (in force) serves on, the last save refused once.
    save_many(gw, [policy(url, f"r{i}") if i < 29 else broken for i in range(30)])
    gw.wait_refused(0)
    gw.quiet()
    assert "q29" in gw.served() or "r28" in gw.served()
    assert gw.refusals_logged() == 1, gw.proc.output[-3000:]
    assert gw.reloads().get("invalid") == 1, gw.reloads()
    assert gw.reloads()["applied"] >= applied
    assert gw.health_policy() == "degraded"


def test_a_huge_valid_policy_is_applied_without_stopping_service(gw: Gateway) -> None:
    url = gw.fake_url
    # About 10 MB: a comment block (a vendored document pasted in) and a valid policy.
    filler = ("# " + "x" * 98 + "\n") * 100_000
    gw.path.write_text(filler + policy(url, "huge"))
    gw.wait_served("huge")


def test_a_directory_or_a_fifo_in_place_of_the_file_is_refused_and_the_file_back_serves(gw: Gateway) -> None:
    url = gw.fake_url
    # A directory where the file was (a volume mounted on the file's path by mistake).
    gw.path.unlink()
    gw.path.mkdir()
    check = gw.wait_refused(0)
    assert "cannot read file" in str(check["problems"]), check
    gw.path.rmdir()
    gw.path.write_text(policy(url, "file1"))
    gw.wait_served("file1")
    # A named pipe (a secrets tool's fifo): reading it waits for a writer that never comes.
    gw.path.unlink()
    os.mkfifo(gw.path)
    check = gw.wait_refused(1)
    assert "not a regular file" in str(check["problems"]), check
    request = urllib.request.Request(f"{gw.proc.url}/admin/policy/reload", method="POST", data=b"")
    try:
        urllib.request.urlopen(request, timeout=5)
    except urllib.error.HTTPError as exc:  # refused at once, not a hang
        assert exc.code == 422, exc.code
        assert "not a regular file" in exc.read().decode()
    else:
        raise AssertionError("a fifo was applied")
    gw.path.unlink()
    gw.path.write_text(policy(url, "file2"))
    gw.wait_served("file2")
    assert gw.health_policy() == "up"


def test_the_policy_directory_replaced_twice_stays_watched(fake: ManagedProcess, tmp_path: Path) -> None:
    # A deploy tool that writes a new directory and renames it over the old one (the old one,
    # being watched, is gone).
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "policy.yaml").write_text(policy(fake.url, "d0"))
    proc = start(
        ["serve", "--policy", str(conf / "policy.yaml"), "--port", "0"], env={"SOPHIA_ACCESS_LOG": "0"}
    )
    gw = Gateway(proc, conf / "policy.yaml", fake.url)
    try:
        gw.wait_served("d0")
        for marker in ("d1", "d2"):
            new = tmp_path / f"conf-{marker}"
            new.mkdir()
            (new / "policy.yaml").write_text(policy(fake.url, marker))
            shutil.rmtree(conf)
            os.rename(new, conf)
            gw.wait_served(marker)
        assert gw.get("/admin/policy")["watching"] is True, proc.output[-3000:]
        assert gw.refusals_logged() == 0, proc.output[-3000:]
    finally:
        assert proc.stop() == 0, proc.output[-3000:]


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root's setpriv to drop DAC overrides"
)
def test_the_file_made_unreadable_is_refused_and_readable_again_clears_it(
    fake: ManagedProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root reads a file of mode 000 anyway: the gateway runs without the capabilities that let it
    # (as a non-root container user would be refused).
    path = tmp_path / "policy.yaml"
    path.write_text(policy(fake.url, "p0"))
    popen = subprocess.Popen

    def without_dac_override(args: list[str], **kwargs: object) -> subprocess.Popen[str]:
        return popen(["setpriv", "--bounding-set=-dac_override,-dac_read_search", *args], **kwargs)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr("gateway.testing.process.subprocess.Popen", without_dac_override)
    proc = start(["serve", "--policy", str(path), "--port", "0"], env={"SOPHIA_ACCESS_LOG": "0"})
    monkeypatch.undo()
    gw = Gateway(proc, path, fake.url)
    try:
        gw.wait_served("p0")
        path.chmod(0)
        check = gw.wait_refused(0)
        assert "Permission denied" in str(check["problems"]), check
        assert "p0" in gw.served()
        path.chmod(0o644)
        gw.until("policy up again", lambda: gw.health_policy() == "up")
        assert gw.refusals_logged() == 1, proc.output[-3000:]
    finally:
        assert proc.stop() == 0, proc.output[-3000:]


def test_a_policy_read_from_a_pipe_at_start_up_is_served_and_not_watched(
    fake: ManagedProcess, tmp_path: Path
) -> None:
    """``serve --policy <(envsubst < policy.yaml)``, as the README suggests: the pipe is read once.
    The watcher's first look at it was a refused reload ("not a regular file"): an invalid reload
    counted and the policy degraded in /health for good (an outside probe). Not watched now."""
    fifo = tmp_path / "policy.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_text, args=(policy(fake.url, "piped"),), daemon=True)
    writer.start()  # (blocks until the gateway opens the pipe)
    proc = start(["serve", "--policy", str(fifo), "--port", "0"], env={"SOPHIA_ACCESS_LOG": "0"})
    gateway = Gateway(proc, fifo, fake.url)
    try:
        gateway.wait_served("piped")
        gateway.quiet()  # what a watcher would have done by now, it has done
        assert "invalid" not in gateway.reloads() and gateway.refusals_logged() == 0
        assert gateway.health_policy() == "up"
        assert "not watched" in proc.output
    finally:
        assert proc.stop() == 0, proc.output[-3000:]
