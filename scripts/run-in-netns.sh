#!/usr/bin/env bash
# Run a command in a private network namespace whose only interface is loopback (needs root).
# For servers that listen on all interfaces (the Milvus standalone of the milvus_server tests):
# nothing they open can be reached from outside this namespace.
#   scripts/run-in-netns.sh .venv/bin/python -m pytest -m milvus_server tests/test_milvus_server.py
set -euo pipefail
if [ "$#" -eq 0 ]; then
  echo "usage: $0 COMMAND [ARG...]" >&2
  exit 2
fi
exec unshare --net -- sh -c 'ip link set lo up && exec "$@"' run-in-netns "$@"
