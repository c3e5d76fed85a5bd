"""Screenshot HDF5 images as HDF Compass shows them, on a private Xvfb display.

usage: /usr/bin/python3 compass_shot.py FILE OUT_DIR [HDF5_PATH=NAME ...]

Run with Debian's python3 (HDF Compass is a Debian package on its h5py). Saves what Compass opens
on (OUT_DIR/open.png: the root's listing; Compass does not follow @default), then for each path
goes to the top, opens each group on the way as a user does (keyboard: select the row, Return) and
opens the dataset, whose image window is saved as OUT_DIR/NAME.png. Exits 1 with one line if a
step does not happen in time. Xvfb and Compass are always stopped.
"""
import os
import re
import subprocess
import sys
import time
from itertools import groupby
from pathlib import Path

import h5py

SCREEN = "1400x900x24"
STEP_TIMEOUT_S = 30
# Where to click in the container window (800x400 at 0,0 without a window manager): the list's
# first row (to give the list the keyboard focus) and the toolbar's "top" button.
FIRST_ROW = (300, 122)
TOP_BUTTON = (248, 50)


def exact(text):
    """text as a POSIX extended regular expression (xdotool's), which knows no escape for "-"."""
    return re.sub(r"([.\[\]()*+?{}|^$\\])", r"\\\1", text)


def natural_key(name):
    """Compass lists a group's members in this order ("7" before "12")."""
    return [int("".join(g)) if digits else "".join(g) for digits, g in groupby(name, key=str.isdigit)]


def row_indices(file_name, hdf5_path):
    """The row of each member on the way to hdf5_path, in Compass' listings."""
    rows, group = [], "/"
    with h5py.File(file_name, "r") as f:
        for part in hdf5_path.strip("/").split("/"):
            rows.append(sorted(f[group], key=natural_key).index(part))
            group = f"{group.rstrip('/')}/{part}"
    return rows


class Display:
    def __init__(self, env):
        self.env = env

    def run(self, *args):
        return subprocess.run(["xdotool", *args], env=self.env, capture_output=True, text=True).stdout

    def wait_window(self, name_regex):
        end = time.monotonic() + STEP_TIMEOUT_S
        while time.monotonic() < end:
            found = self.run("search", "--onlyvisible", "--name", name_regex).split()
            if found:
                return found[-1]
            time.sleep(0.3)
        raise TimeoutError(f"no window named {name_regex!r} within {STEP_TIMEOUT_S} s")

    def click(self, window, xy):
        self.run("windowfocus", "--sync", window)
        self.run("mousemove", "--window", window, str(xy[0]), str(xy[1]), "click", "1")
        time.sleep(0.5)

    def open_row(self, window, row):
        self.click(window, FIRST_ROW)
        self.run("key", "Home", *["Down"] * row, "Return")

    def save(self, window, out):
        time.sleep(1.5)  # let the window paint
        subprocess.run(["import", "-window", window, str(out)], env=self.env, check=True)


def shoot(file_name, out_dir, targets, display):
    base = exact(Path(file_name).name)
    main = display.wait_window(f"^{base} /$")
    display.save(main, out_dir / "open.png")
    for hdf5_path, name in targets:
        display.click(main, TOP_BUTTON)
        display.wait_window(f"^{base} /$")
        *groups, leaf = hdf5_path.strip("/").split("/")
        rows = row_indices(file_name, hdf5_path)
        for depth, row in enumerate(rows[:-1]):
            display.open_row(main, row)
            display.wait_window(f"^{base} /{exact('/'.join(groups[:depth + 1]))}$")
        display.open_row(main, rows[-1])
        picture = display.wait_window(f"^{exact(leaf)}$")
        display.save(picture, out_dir / f"{name}.png")
        display.run("windowunmap", "--sync", picture)


def main(file_name, out_dir, *targets):
    out_dir = Path(out_dir)
    targets = [t.split("=", 1) for t in targets]
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-screen", "0", SCREEN, "-nolisten", "tcp"],
                            pass_fds=[write_fd], stderr=subprocess.DEVNULL)
    os.close(write_fd)
    compass = None
    try:
        with os.fdopen(read_fd) as pipe:
            display_number = pipe.readline().strip()
        env = dict(os.environ, DISPLAY=f":{display_number}", WXSUPPRESS_SIZER_FLAGS_CHECK="1")
        log = open(out_dir / "compass.log", "w")
        compass = subprocess.Popen(["HDFCompass", file_name], env=env, stdout=log, stderr=log)
        shoot(file_name, out_dir, targets, Display(env))
    except (TimeoutError, subprocess.CalledProcessError) as err:
        sys.exit(f"HDF Compass: {err}")
    finally:
        for process in (compass, xvfb):
            if process is not None:
                process.terminate()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__.strip().splitlines()[2])
    main(*sys.argv[1:])
