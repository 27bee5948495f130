#!/usr/bin/env bash
# Print the path of a working Python 3.13 interpreter, or fail saying how to get one.
set -u
candidates=()
if command -v pyenv >/dev/null 2>&1; then
  for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.13(\.[0-9]+)?$' | sort -V -r); do
    candidates+=("$(PYENV_VERSION="$v" pyenv which python3 2>/dev/null)")
  done
fi
candidates+=("$(command -v python3.13 2>/dev/null)" "$(command -v python3 2>/dev/null)")
for c in "${candidates[@]}"; do
  if [ -n "$c" ] && "$c" -c 'import sys, venv; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; then
    echo "$c"
    exit 0
  fi
done
echo "Python 3.13 not found: install it (e.g. 'pyenv install 3.13') or set PYTHON313=/path/to/python3.13" >&2
exit 1
