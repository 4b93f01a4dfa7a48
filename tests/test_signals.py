"""Kit commands end cleanly on SIGINT, SIGTERM and SIGHUP (dgemma_helpers/signals.py): real process trees.

`vllm-serve` runs here with a stand-in for vLLM's server (`--python` names a script that answers
/health and starts a child of its own), so the whole path runs without vLLM: the signal, the kit's
cleanup, the process group ended whole, the port freed, the temporary directory removed, the exit code.
The real server gets the same test in tests/test_vllm.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from dgemma_helpers.model_paths import REPO_ROOT
from dgemma_helpers.signals import Stopped, deferred, end_group, exit_code, start_group, stop_on_signals

TINY = REPO_ROOT / "models" / "dgemma-tiny"
# A stand-in for `python -m vllm.entrypoints.openai.api_server ... --port P`: a child of its own (as
# vLLM's EngineCore is), both pids in a file, /health answered on the port.
FAKE_SERVER = f"""#!{sys.executable}
import http.server, os, subprocess, sys
port = int(sys.argv[sys.argv.index("--port") + 1])
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(os.environ["PIDS_FILE"] + ".tmp", "w") as f:
    f.write(f"{{os.getpid()}} {{child.pid}}")
os.rename(os.environ["PIDS_FILE"] + ".tmp", os.environ["PIDS_FILE"])

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a):
        pass

http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""
DEADLINE_S = 60.0  # every wait below gives up after this


def as_from_a_terminal() -> None:
    """A child's preexec_fn: SIGINT and SIGHUP as a command run from a terminal has them. A job that
    a script starts in the background (`cmd &`, nohup) inherits them ignored, and a Python program
    keeps an ignored signal ignored (so does the kit: tested below)."""
    for s in (signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is gone, bar its exit status
    except (FileNotFoundError, IndexError):
        return False


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {DEADLINE_S:.0f} s"
        time.sleep(0.1)


def port_free(port: int) -> bool:
    """Nothing listens there (a connection of ours left in TIME_WAIT does not count, as for any server)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process table from /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_vllm_serve_ends_its_whole_tree_and_its_files_on_a_signal(tmp_path, sig):
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_SERVER)
    fake.chmod(0o755)
    pids_file, port, temp = tmp_path / "pids", free_port(), tmp_path / "tmp"
    temp.mkdir()
    env = dict(os.environ, PIDS_FILE=str(pids_file), TMPDIR=str(temp), HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO_ROOT))
    cmd = [sys.executable, "-m", "dgemma_helpers", "vllm-serve", "--model", str(TINY), "--python", str(fake),
           "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_from_a_terminal)
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/health") or proc.poll() is not None, "the server answers")
        assert proc.poll() is None, proc.communicate()[1]
        server, child = map(int, pids_file.read_text().split())
        assert any(p.name.startswith("dgemma-vllm-") for p in temp.iterdir())  # its generation_config is there
        proc.send_signal(sig)
        stderr = proc.communicate(timeout=DEADLINE_S)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, stderr
    assert "Traceback" not in stderr and stderr.splitlines()[-1].startswith("interrupted"), stderr
    wait_for(lambda: not alive(server) and not alive(child), "the server's process group is gone")
    assert port_free(port) and list(temp.iterdir()) == []


def test_end_group_ends_children_the_leader_left_behind():
    # The leader exits at once on SIGTERM; its child (in the same group) ignores SIGTERM: SIGKILL ends it.
    code = ("import signal, subprocess, sys, time; "
            "c = subprocess.Popen([sys.executable, '-c', 'import signal, time; signal.signal(signal.SIGTERM, "
            "signal.SIG_IGN); print(1, flush=True); time.sleep(600)'], stdout=subprocess.PIPE); "
            "c.stdout.readline(); print(c.pid, flush=True); time.sleep(600)")
    leader = start_group([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(leader.stdout.readline())
    assert os.getpgid(child) == leader.pid != os.getpgid(0)  # its own group, not the test's
    end_group(leader, grace_s=1.0)
    assert leader.returncode == -signal.SIGTERM
    if os.path.isdir("/proc"):
        wait_for(lambda: not alive(child), "the leader's child is gone")


def test_a_signal_in_a_deferred_block_waits_for_its_end_and_gives_the_exit_code():
    done = []
    before = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # (as_from_a_terminal, for this process)
    with pytest.raises(Stopped) as stopped, stop_on_signals():
        with deferred():
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.05)  # the handler has run by now (between these bytecodes), and waited
            done.append("the block's end")
    assert done == ["the block's end"] and stopped.value.signum == signal.SIGHUP
    assert isinstance(stopped.value, KeyboardInterrupt) and exit_code(stopped.value) == 129
    assert exit_code(KeyboardInterrupt()) == 130 and signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
    signal.signal(signal.SIGHUP, before)


def test_a_signal_ignored_on_entry_stays_ignored():
    """Under nohup SIGHUP is ignored: stop_on_signals leaves it so, and puts nothing else in its place."""
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with stop_on_signals():
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.05)
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


def test_a_group_leader_is_ended_when_its_starter_is_killed_outright(tmp_path):
    """SIGKILL reaches no handler, so the starter cannot end the group: the kernel's parent-death
    signal (start_group sets it) ends the leader anyway."""
    pid_file = tmp_path / "leader.pid"
    starter = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from dgemma_helpers.signals import start_group\n"
        "p = start_group([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(600)")])
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text(), "the starter wrote its child's pid")
        leader = int(pid_file.read_text())
        assert alive(leader)
        starter.kill()
        starter.wait()
        wait_for(lambda: not alive(leader), "the leader ended after its starter was killed")
    finally:
        starter.kill()
        if pid_file.exists() and pid_file.read_text():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
