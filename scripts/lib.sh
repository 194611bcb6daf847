# Shared helpers for scripts/. Sourced, not run.

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Makes sure cargo is on PATH (rustup installs it under ~/.cargo/bin).
need_rust() {
  if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null 2>&1 || die "cargo is not installed: install the stable Rust toolchain (https://rustup.rs) and re-run"
}

# Installs Debian packages when missing (root only); names them when it cannot.
need_debs() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    step "installing Debian packages: ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    die "missing Debian packages: ${missing[*]} (run as root to install them automatically, or: sudo apt-get install ${missing[*]})"
  fi
}

# Makes sure Node.js and npm are there (Debian's packages when root).
need_node() {
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 && return 0
  need_debs nodejs npm
}

# `npm ci` in DIR from its lockfile when the lockfile is newer than node_modules (packages
# used as they are, nothing is built); WHAT names them in the messages.
npm_deps() {
  local dir="$1" what="$2"
  need_node
  (
    cd "$dir"
    if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
      step "installing $what from npm ($dir)"
      npm ci --no-audit --no-fund --loglevel=error
    fi
  ) || die "npm ci in $dir failed (see above); Node.js $(node --version 2>/dev/null || echo missing)"
}

# Stock livekit-client for the LiveKit front door's browser tests.
livekit_web_deps() { npm_deps tests/livekit-web "livekit-client"; }

# Stock Element Call (its embedded build) for the Element Call test and scripts/run.
element_call_deps() { npm_deps tests/element-call "Element Call"; }

# Installs the stock Python livekit SDK (PyPI, tests/livekit-py/requirements.txt) into its
# own venv for the front door's non-browser client test; reinstalled when the pin changes.
livekit_py_deps() {
  local venv="${SLUICE_LIVEKIT_PY_VENV:-$HOME/.cache/sluice-livekit-py}"
  local req=tests/livekit-py/requirements.txt
  if [ -x "$venv/bin/python" ] && cmp -s "$req" "$venv/.sluice-requirements" 2>/dev/null; then
    return 0
  fi
  command -v python3 >/dev/null 2>&1 || need_debs python3 python3-venv
  python3 -c "import venv, ensurepip" 2>/dev/null || need_debs python3-venv
  step "installing the Python livekit SDK into $venv (from PyPI)"
  python3 -m venv "$venv" || die "cannot create a Python venv at $venv (is python3-venv installed?)"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" \
    || die "cannot install $(tr '\n' ' ' < "$req")from PyPI into $venv"
  cp "$req" "$venv/.sluice-requirements"
}

# Builds the reference web client into web/dist (npm ci from the lockfile when it changed).
build_web() {
  need_node
  step "building the web client (web/dist)"
  (
    cd web
    if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
      npm ci --no-audit --no-fund --loglevel=error
    fi
    npm run --silent build -- --logLevel warn
  ) || die "building the web client failed (see above); Node.js $(node --version 2>/dev/null || echo missing)"
}
