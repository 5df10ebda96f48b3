"""Helpers of the browser test (tests/test_browser.py): find Debian's chromium, run an isolated
JupyterLab server, and drive a notebook in it through JupyterLab's own command registry.

The server gets its own config, data, runtime and settings folders under a temporary directory,
so nothing of the user's Jupyter set-up (extensions' settings, workspaces, running servers) can
change what the test sees, and it is stopped (kernels included) even when the test fails.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

# What this project's machines need: no sandbox (root), no GPU, and no traffic of the browser's own.
# Playwright adds a fresh --user-data-dir itself.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium_path() -> str | None:
    """Debian's chromium (``apt-get install chromium``), or ``None``. Never a downloaded browser."""
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


class JupyterLab:
    """A JupyterLab server on ``127.0.0.1`` serving ``root_dir``, with a generated token.

    ``env`` is added to the server's environment (and so to its kernels'). Use as a context
    manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, root_dir: Path, home: Path, *, env: dict[str, str] | None = None,
                 start_timeout: float = 180.0):
        self.root_dir = Path(root_dir)
        self.home = Path(home)
        self.extra_env = dict(env or {})
        self.start_timeout = start_timeout
        self.token = secrets.token_hex(24)
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log_path = self.home / "jupyterlab.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}?token={self.token}"

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            JUPYTER_CONFIG_DIR=str(self.home / "config"),
            JUPYTER_DATA_DIR=str(self.home / "data"),
            JUPYTER_RUNTIME_DIR=str(self.home / "runtime"),
            JUPYTERLAB_SETTINGS_DIR=str(self.home / "settings"),
            JUPYTERLAB_WORKSPACES_DIR=str(self.home / "workspaces"),
            IPYTHONDIR=str(self.home / "ipython"),
            JUPYTER_PLATFORM_DIRS="0",
            PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        )
        env.pop("JUPYTER_PATH", None)
        env.pop("JUPYTER_CONFIG_PATH", None)
        env.update(self.extra_env)
        return env

    def _write_settings(self) -> None:
        settings = self.home / "settings"
        # Every cell in the DOM (no virtual scrolling), so output far down the notebook is findable.
        _write_json(settings / "@jupyterlab/notebook-extension/tracker.jupyterlab-settings",
                    {"windowingMode": "none"})
        # No "get news?" toast over the notebook.
        _write_json(settings / "@jupyterlab/apputils-extension/notification.jupyterlab-settings",
                    {"fetchNews": "false", "checkForUpdates": False})

    def start(self) -> JupyterLab:
        for sub in ("config", "data", "runtime", "settings", "workspaces", "ipython"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        self._write_settings()
        self.port = free_port()
        cmd = [
            sys.executable, "-m", "jupyterlab", "--no-browser",
            "--ip=127.0.0.1", f"--port={self.port}", "--port-retries=0",
            f"--ServerApp.root_dir={self.root_dir}",
            f"--IdentityProvider.token={self.token}",
            "--LabApp.expose_app_in_browser=True",                 # window.jupyterapp: commands, kernel state
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",                 # no look-ups on PyPI
            "--ServerApp.terminals_enabled=False",
        ]
        if os.geteuid() == 0:  # CI and this project's machines run as root
            cmd.append("--allow-root")
        log = self.log_path.open("w")
        self.proc = subprocess.Popen(cmd, cwd=self.root_dir, env=self._environment(), stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode} while starting:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url("api/status"), timeout=5) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"JupyterLab did not answer on port {self.port} within {self.start_timeout:.0f} s:\n"
                           f"{self.log()}")

    def log(self, tail: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-tail:])
        except OSError:
            return "(no log)"

    def _own_kernel_pids(self) -> list[int]:
        """Processes whose command line names this server's runtime folder: its kernels."""
        marker = str(self.home / "runtime")
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline:
                pids.append(int(proc.name))
        return pids

    def stop(self) -> None:
        """Shut the server down with its kernels: REST shutdown, then SIGTERM, then SIGKILL."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                req = urllib.request.Request(self.url("api/shutdown"), method="POST", data=b"")
                urllib.request.urlopen(req, timeout=10).close()
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=15)
        # Kernels run in sessions of their own; any that outlived the server are ended by pid.
        for pid in self._own_kernel_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc = None

    def __enter__(self) -> JupyterLab:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# JavaScript run in the page; ``window.jupyterapp`` is there thanks to expose_app_in_browser.
JS_NOTEBOOK_READY = """(path) => {
    const app = window.jupyterapp;
    const w = app && app.shell.currentWidget;
    if (!w || !w.context || w.context.path !== path || !w.context.isReady) return false;
    const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
    return !!kernel && kernel.status === 'idle';
}"""

JS_RUN_ALL = """() => {
    window.__reprolibRun = {done: false, ok: null, error: null};
    window.jupyterapp.commands.execute('notebook:run-all-cells').then(
        ok => { window.__reprolibRun = {done: true, ok: ok, error: null}; },
        err => { window.__reprolibRun = {done: true, ok: false, error: String(err)}; });
}"""

JS_RUN_FINISHED = """() => {
    const run = window.__reprolibRun;
    if (!run || !run.done) return false;
    const w = window.jupyterapp.shell.currentWidget;
    const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
    if (!kernel || kernel.status !== 'idle') return false;
    // No cell still queued or running ("[*]" prompt).
    return !Array.from(document.querySelectorAll('.jp-InputArea-prompt')).some(p => p.textContent.includes('*'));
}"""

JS_CELL_ERRORS = """() => {
    const nb = window.jupyterapp.shell.currentWidget.content;
    const errors = [];
    nb.widgets.forEach((cell, i) => {
        for (const o of (cell.model.toJSON().outputs || [])) {
            if (o.output_type === 'error') errors.push(`cell ${i}: ${o.ename}: ${o.evalue}`);
        }
    });
    return errors;
}"""
