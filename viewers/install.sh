#!/bin/sh
# usage: sh viewers/install.sh VENV
# What `make viewers` needs, each installed only when missing: the Debian packages of
# viewers/debian-packages.txt (Chromium, Xvfb, ImageMagick, xdotool, HDF Compass, and the X11 libraries
# that PyQt5's xcb platform plugin loads); a venv with JupyterLab + h5web, silx (PyQt5, matplotlib,
# QtAwesome, PyOpenGL) and hdf5plugin, at the versions the checks were written against; playwright-core
# (drives Chromium) in VENV/node, which needs Node.js 18 or newer.
set -eu
VENV=${1:-.venv-viewers}
HERE=$(dirname "$0")
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
PIP_PACKAGES="jupyterlab==4.6.6 jupyterlab-h5web==12.9.0 silx==3.1.3 PyQt5==5.15.11 hdf5plugin==7.1.0 scipy==1.17.1 matplotlib==3.11.2 QtAwesome==1.4.2 PyOpenGL==3.1.10 pillow==13.0.0"
# 1.61.1: the last release that runs on Node.js 18 (Debian 12's own nodejs); 1.62 and later need 20.
PLAYWRIGHT=playwright-core@1.61.1

missing=""
for package in $(sed 's/#.*//' "$HERE/debian-packages.txt"); do
  dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing="$missing $package"
done
if [ -n "$missing" ]; then
  echo "installing Debian packages:$missing"
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086  # one word per package
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

if [ "$(cat "$VENV/.installed" 2>/dev/null)" != "$PIP_PACKAGES" ]; then  # the stamp holds the pins
  echo "installing $VENV (jupyterlab, jupyterlab-h5web, silx, PyQt5, hdf5plugin)"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip --disable-pip-version-check -q install $PIP_PACKAGES
  echo "$PIP_PACKAGES" > "$VENV/.installed"
fi

command -v node >/dev/null 2>&1 || { echo "install.sh: h5web's check needs Node.js 18 or newer (apt-get install nodejs npm)" >&2; exit 1; }
installed=$(node -p "require(require('path').resolve('$VENV/node/node_modules/playwright-core/package.json')).version" 2>/dev/null || true)
if [ "playwright-core@$installed" != "$PLAYWRIGHT" ]; then
  echo "installing $PLAYWRIGHT into $VENV/node"
  mkdir -p "$VENV/node"
  npm install --silent --no-audit --no-fund --prefix "$VENV/node" "$PLAYWRIGHT"
fi
