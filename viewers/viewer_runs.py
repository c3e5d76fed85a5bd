"""Open a shard in each viewer, headless, and save its screenshots as OUT_DIR/{view}.png.

A view is "default" (what the file opens on) or a picture name ("rgb", "edge", "label") of the
frame given. Every server and display is bound to this machine, limited in time and stopped.
"""
import os
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import system_libraries

HERE = Path(__file__).resolve().parent
PICTURES = ("rgb", "edge", "label")
SERVER_START_TIMEOUT_S = 90
VIEWER_TIMEOUT_S = 240


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(command, env=None):
    """Run a viewer's script; its own one-line error message becomes ours."""
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=VIEWER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"{Path(command[1]).name} did not finish within {VIEWER_TIMEOUT_S} s"
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        # A library a program cannot load is named on an earlier line than its last ("Aborted").
        cause = [line.strip() for line in lines if "cannot open shared object file" in line
                 or "Could not load the Qt platform plugin" in line]
        last = lines[-1] if lines else f"{command[1]} exited with status {done.returncode}"
        return f"{last}: {cause[0]}" if cause and cause[0] != last else last
    return None


@contextmanager
def jupyter_lab(venv, root_dir, log_path):
    """A JupyterLab server on 127.0.0.1 without a token, serving root_dir; yields its /lab URL."""
    port = free_port()
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [str(venv / "bin" / "jupyter"), "lab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={port}", "--ServerApp.port_retries=0", "--ServerApp.token=",
             "--ServerApp.password=", f"--ServerApp.root_dir={root_dir}"],
            stdout=log, stderr=subprocess.STDOUT,
            env=dict(os.environ, JUPYTER_CONFIG_DIR=str(log_path.parent / "jupyter")))
        try:
            url = f"http://127.0.0.1:{port}"
            end = time.monotonic() + SERVER_START_TIMEOUT_S
            while True:
                try:
                    urllib.request.urlopen(f"{url}/api", timeout=2).close()
                    break
                except OSError as err:
                    if server.poll() is not None or time.monotonic() > end:
                        raise RuntimeError(f"JupyterLab did not start; see {log_path}") from err
                    time.sleep(0.5)
            yield f"{url}/lab"
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()


def shoot_h5web(shard, frame_id, out_dir, venv):
    """h5web in JupyterLab: double-click the shard, then click images > frame > rgb, edge, label."""
    try:
        with jupyter_lab(venv, shard.parent, out_dir / "jupyterlab.log") as url:
            env = dict(os.environ, NODE_PATH=str(venv / "node" / "node_modules"))
            clicks = ["images", frame_id, *(f"{name}={name}" for name in PICTURES)]
            return run(["node", str(HERE / "h5web_shot.js"), url, shard.name, str(out_dir), *clicks], env=env)
    except RuntimeError as err:
        return str(err)


def shoot_silx(shard, frame_id, out_dir, venv):
    """silx view: select the file (its default), then each picture's NXdata group. First, that Qt finds
    every system library it loads: else Qt would only print "Aborted"."""
    problem = system_libraries.missing_problem(venv)
    if problem:
        return problem
    paths = {"default": "/", **{name: f"/images/{frame_id}/{name}" for name in PICTURES}}
    for view, path in paths.items():
        problem = run(["xvfb-run", "-a", "-s", "-screen 0 1400x900x24 -nolisten tcp",
                       str(venv / "bin" / "python"), str(HERE / "silx_shot.py"), str(shard), path,
                       str(out_dir / f"{view}.png")])
        if problem:
            return problem
    return None


def shoot_compass(shard, frame_id, out_dir, venv):
    """HDF Compass: the root listing it opens on, /browse/data, and each picture's dataset."""
    targets = ["/browse/data=default", *(f"/images/{frame_id}/{name}/data={name}" for name in PICTURES)]
    return run(["/usr/bin/python3", str(HERE / "compass_shot.py"), str(shard), str(out_dir), *targets])


VIEWERS = {"h5web": shoot_h5web, "silx": shoot_silx, "compass": shoot_compass}
