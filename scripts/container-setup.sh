#!/usr/bin/env bash
# What the container tests need, installed and started: Podman serving the Docker Engine API on
# /run/podman/podman.sock, the runc runtime, and a tiny local image `shoal-agent:latest` (images
# cannot be pulled here; the host's Python is bind-mounted into it read-only by the backend).
set -euo pipefail

if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc >/dev/null
fi

# crun fails on this machine's cgroup layout and podman's default ulimits exceed what root may
# set here; runc and these limits work.
mkdir -p /etc/containers
if [ ! -f /etc/containers/containers.conf ]; then
    cat > /etc/containers/containers.conf <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
CONF
fi

sock=/run/podman/podman.sock
if ! curl -fs --unix-socket "$sock" http://d/_ping >/dev/null 2>&1; then
    mkdir -p /run/podman
    nohup podman system service --time=0 "unix://$sock" >/tmp/podman-service.log 2>&1 &
    for _ in $(seq 100); do
        curl -fs --unix-socket "$sock" http://d/_ping >/dev/null 2>&1 && break
        sleep 0.1
    done
fi

if ! podman image exists shoal-agent:latest; then
    root=$(mktemp -d)
    mkdir -p "$root"/{usr,lib,lib64,bin,sbin,etc,tmp,root,proc,sys,dev,work,shoal,run}
    chmod 1777 "$root/tmp"
    tar -C "$root" -cf "$root.tar" .
    podman import "$root.tar" shoal-agent:latest >/dev/null
    rm -rf "$root" "$root.tar"
fi
echo "container engine ready at unix://$sock"
