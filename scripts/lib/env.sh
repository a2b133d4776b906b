# Shared set-up for the scripts: pins Bun, installs it from npm into .tools/, installs the project's
# dependencies, and puts both on PATH. Sourced, never run. Idempotent: a second run only checks versions.
set -euo pipefail
KILN_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# Bun is pinned because the compiled binary's behaviour depends on the runtime it embeds.
BUN_VERSION=1.4.5
export PATH="$KILN_ROOT/.tools/node_modules/.bin:$KILN_ROOT/node_modules/.bin:$PATH"

ensure_bun() {
  if [ "$(bun --version 2>/dev/null || true)" != "$BUN_VERSION" ]; then
    echo "installing bun $BUN_VERSION from npm into .tools/" >&2
    mkdir -p "$KILN_ROOT/.tools"
    npm install --prefix "$KILN_ROOT/.tools" --no-save --no-audit --no-fund --loglevel=error "bun@$BUN_VERSION" >&2
  fi
  if [ ! -d "$KILN_ROOT/node_modules/hono" ] || [ "$KILN_ROOT/bun.lock" -nt "$KILN_ROOT/node_modules/.kiln-installed" ]; then
    (cd "$KILN_ROOT" && bun install --frozen-lockfile >&2)
    touch "$KILN_ROOT/node_modules/.kiln-installed"
  fi
}

# Debian packages the repository formats need and their tests prove against: rpm (rpmbuild, rpm -qp),
# python3-rpm (rpm's own version order), createrepo-c (RPM metadata), dnf (installs from a Kiln repository),
# gnupg (signed metadata), libdpkg-dev (dpkg's own version order, linked into a test harness), dpkg-dev
# (dpkg-scanpackages, the Debian index a test and the benchmark compare with), xz-utils (xz-compressed
# test packages).
KILN_REPO_DEBS=(rpm python3-rpm createrepo-c dnf gnupg libdpkg-dev dpkg-dev xz-utils)

# ensure_debs PKG... installs the Debian packages that are missing, running apt-get update once.
ensure_debs() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
    return 1
  fi
  echo "installing Debian packages: ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}
