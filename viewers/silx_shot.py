"""Screenshot one HDF5 path as `silx view` shows it; run under xvfb-run with .venv-viewers' python.

usage: python silx_shot.py FILE PATH OUT.png

Builds the window `silx view FILE` opens, selects PATH in its tree (one click: "/" shows the file's
default), waits for the plot and saves the window's pixels. One path per process: silx keeps the
last tab a user chose, and a fresh window shows what a user sees on first opening PATH.
"""
import sys
import time

import hdf5plugin  # noqa: F401  (silx view imports it too: zstd and lz4 shards)
from silx.app.view.main import createWindow
from silx.gui import qt

LOAD_TIMEOUT_S = 30
RENDER_S = 2.0


def pump(app, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def main(file_name, path, out):
    app = qt.QApplication([])
    # A private settings object: no window size or last-used view from an earlier run.
    settings = qt.QSettings(qt.QSettings.IniFormat, qt.QSettings.UserScope, "hedseg", "silx-shot", None)
    settings.clear()
    window = createWindow(None, settings)
    window.resize(1200, 800)
    tree = window._Viewer__treeview  # silx offers no public handle on the viewer's tree
    loaded = []
    tree.findHdf5TreeModel().sigH5pyObjectLoaded.connect(lambda h5, *_: loaded.append(h5))
    window.appendFile(file_name)
    window.show()
    end = time.monotonic() + LOAD_TIMEOUT_S
    while not loaded and time.monotonic() < end:
        pump(app, 0.05)
    if not loaded:
        sys.exit(f"silx: {file_name} did not load within {LOAD_TIMEOUT_S} s")
    tree.setSelectedH5Node(loaded[0][path])
    window.displaySelectedData()
    pump(app, RENDER_S)
    if not window.grab().save(out):
        sys.exit(f"silx: could not write {out}")
    window.close()
    pump(app, 0.2)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__.strip().splitlines()[2])
    main(*sys.argv[1:])
