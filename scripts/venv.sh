# Sourced by scripts/test.sh and scripts/serve.sh (from the repository root): create ./.venv
# when it is missing or has no pip, then install the gateway into it with the extras given.
# A fresh Debian/Ubuntu machine needs only python3 (3.11+): as root, a missing python3-venv is
# installed with apt-get; otherwise one line says what to install.

is_root_with_apt() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1
}

apt_install() {
  echo "installing $* (apt-get)..." >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

install_into_venv() {  # install_into_venv SPEC, e.g. '.[test]'
  if ! command -v python3 >/dev/null 2>&1; then
    echo "error: python3 is not installed: install Python 3.11 or newer (Debian/Ubuntu: apt-get install python3 python3-venv)" >&2
    exit 1
  fi
  if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: Python 3.11 or newer is needed; python3 is $(python3 -V 2>&1)" >&2
    exit 1
  fi
  if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    # --clear: a venv made without ensurepip has a python but no pip.
    if ! python3 -m venv --clear .venv >/dev/null 2>&1; then
      if is_root_with_apt; then
        apt_install python3-venv
        python3 -m venv --clear .venv
      else
        echo "error: python3 -m venv failed: install the package python3-venv (Debian/Ubuntu: sudo apt-get install python3-venv)" >&2
        exit 1
      fi
    fi
  fi
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$1"
}
