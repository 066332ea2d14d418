#!/usr/bin/env bash
# Install what the project needs on a fresh machine; a no-op when nothing changed.
#   --metagpt   MetaGPT 0.8.2 with its real runtime deps (requirements/metagpt-*.txt)
#   --node      the JS client's npm packages
#   --browser   Debian's chromium (for the browser tests)
#   --redis     a Redis server on 127.0.0.1:6379, and redis-cli (the cluster tests make clusters with it)
#   --terminal  Debian's tmux (the terminal tests drive `wirepipe watch` in it)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .stamps
PY="${PYTHON:-python3}"

want_metagpt=0 want_node=0 want_browser=0 want_redis=0 want_terminal=0
for a in "$@"; do
  case "$a" in
    --metagpt) want_metagpt=1 ;;
    --node) want_node=1 ;;
    --browser) want_browser=1 ;;
    --redis) want_redis=1 ;;
    --terminal) want_terminal=1 ;;
    *) echo "bootstrap: unknown option $a" >&2; exit 2 ;;
  esac
done

say() { printf 'bootstrap: %s\n' "$*" >&2; }
hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }
fresh() { [ -f ".stamps/$1" ] && [ "$(cat ".stamps/$1")" = "$2" ]; }
stamp() { printf '%s' "$2" > ".stamps/$1"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }
apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then as_root apt-get update -qq >/dev/null; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip -q --disable-pip-version-check)

h=$(hash_of pyproject.toml requirements/dev.txt)
if ! fresh core "$h"; then
  # requirements/dev.txt holds the notebook stack too (anywidget, JupyterLab,
  # Notebook 7, ipykernel, nbclient: about 100 packages, ~25 s on a fresh venv).
  say "installing wirepipe and its dev tools (the notebook tests' JupyterLab included)"
  "${PIP[@]}" install -r requirements/dev.txt
  "${PIP[@]}" install --no-deps -e .
  stamp core "$h"
fi

# `pip install metagpt` cannot resolve (it pins a package the index no longer
# serves): install the verified freeze of MetaGPT's real runtime deps with
# --no-deps.  requirements/metagpt-runtime.txt is the short list it was built from.
if [ "$want_metagpt" = 1 ]; then
  h=$(hash_of requirements/metagpt-lock.txt)
  if ! fresh metagpt "$h"; then
    say "installing MetaGPT 0.8.2 and its runtime deps (about a minute; pip's 'incompatible' warnings are expected)"
    "${PIP[@]}" install --no-deps -r requirements/metagpt-lock.txt
    stamp metagpt "$h"
  fi
fi

if [ "$want_node" = 1 ]; then
  command -v npm >/dev/null || apt_install nodejs npm
  h=$(hash_of clients/js/package.json clients/js/package-lock.json)
  if ! fresh node "$h" || [ ! -d clients/js/node_modules ]; then
    say "installing the JS client's packages"
    (cd clients/js && npm ci --no-audit --no-fund --loglevel=error)
    stamp node "$h"
  fi
fi

if [ "$want_browser" = 1 ] && ! command -v chromium >/dev/null; then
  say "installing Debian's chromium"
  apt_install chromium
fi

if [ "$want_terminal" = 1 ] && ! command -v tmux >/dev/null; then
  say "installing Debian's tmux"
  apt_install tmux
fi

if [ "$want_redis" = 1 ]; then
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    say "installing redis-server and redis-tools (redis-cli)"
    apt_install redis-server redis-tools
  fi
  if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
    say "starting redis-server on 127.0.0.1:6379"
    mkdir -p /tmp/wirepipe-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /tmp/wirepipe-redis --logfile /tmp/wirepipe-redis/redis.log
  fi
fi
