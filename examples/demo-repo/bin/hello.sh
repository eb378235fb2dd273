#!/bin/sh
# A script stored in the repository, executed from /cvmfs.
echo "hello.sh: running as $0 with arguments: $*"
echo "hello.sh: my directory holds: $(ls "$(dirname "$0")" | tr '\n' ' ')"
