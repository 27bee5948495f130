#!/usr/bin/env bash
# Make headless Chromium available for the dashboard's browser test, then print
#     export PROMPTRUN_CHROMIUM=/usr/bin/chromium
# on stdout. Debian's `chromium` package is installed (apt-get, as root) when no
# Chromium is on the machine: Playwright cannot download its own browser builds here.
# Idempotent: a second run only finds the binary. Progress goes to stderr.
set -euo pipefail

log() { printf 'chromium: %s\n' "$*" >&2; }
find_chromium() {
	for name in "${PROMPTRUN_CHROMIUM:-}" chromium chromium-browser; do
		[[ -n "$name" ]] && command -v "$name" 2>/dev/null && return 0
	done
	return 1
}

if ! path="$(find_chromium)"; then
	if [[ "$(id -u)" != 0 ]]; then
		log "ERROR: Chromium is missing; install Debian's chromium package (apt-get install chromium) as root"
		exit 1
	fi
	log "installing Debian's chromium package"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >&2 || log "apt-get update failed; trying the package lists there are"
	apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2
	path="$(find_chromium)" || { log "ERROR: chromium still not found after apt-get install"; exit 1; }
fi
log "using $path ($("$path" --version 2>/dev/null || echo 'version unknown'))"
printf 'export PROMPTRUN_CHROMIUM=%q\n' "$path"
