#!/usr/bin/env bash
# Install the Debian packages of the local one-node SLURM cluster (slurm/up.sh starts it).
# Needs root (or sudo) and a Debian/Ubuntu apt. Nothing is started here: no systemd is assumed.
#   slurm/install.sh            # slurm-wlm, munge, slurmdbd, mariadb-server
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install.sh: run as root (or install sudo)" >&2; exit 1; }
  SUDO="sudo"
fi
command -v apt-get >/dev/null || { echo "install.sh: needs apt-get (Debian/Ubuntu); install slurm-wlm, munge, slurmdbd and mariadb-server by hand" >&2; exit 1; }

PKGS="slurm-wlm munge slurmdbd mariadb-server"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then
  echo "install.sh: already installed: $PKGS"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# policy-rc.d=101 keeps package scripts from starting daemons on machines that have init scripts
# (an existing policy-rc.d is left as it is)
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get install -y -qq --no-install-recommends $missing
echo "install.sh: installed:$missing"
