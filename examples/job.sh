#!/bin/sh
# The demo job: an ordinary shell script that uses /cvmfs as if it were mounted.
# `parrot_cvmfs demo` runs it under parrot_run; it fails loudly if anything is off.
set -eu
R=/cvmfs/demo.parrot-cvmfs.org

echo "== ls -l $R"
ls -l "$R"
echo
echo "== cat $R/README.txt"
cat "$R/README.txt"
echo
echo "== a chunked file: $(stat -c '%s bytes' "$R/data/large.bin"), sha256 $(sha256sum < "$R/data/large.bin" | cut -c1-16)..."
echo "== the last line of data/numbers.csv: $(tail -n 1 "$R/data/numbers.csv")"
echo "== a symlink: data/readme-link -> $(readlink "$R/data/readme-link")"
echo
echo "== a script from the repository:"
"$R/bin/hello.sh" one two
echo
if [ -x "$R/bin/hello-c" ]; then
    echo "== a compiled program from the repository:"
    "$R/bin/hello-c" three
    echo
fi
echo "== Python importing a package stored in the repository:"
PYTHONPATH="$R/lib/python" python3 -c 'import demo_pkg; print(demo_pkg.GREETING, "from", demo_pkg.__file__)'
echo
echo "== cd into the repository:"
cd "$R/lib/python" && echo "pwd: $(pwd)" && echo "entries: $(ls)"
echo
echo "== writing is refused:"
if touch "$R/new-file" 2>/dev/null; then echo "unexpected: write succeeded"; exit 1; fi
echo "touch $R/new-file: $(touch "$R/new-file" 2>&1 | sed 's/.*: //')"
echo
echo "job done"
