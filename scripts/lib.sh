# Shared set-up for scripts/run and scripts/test: installs what is missing, never what is there.
# Sourced, not run.

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root (or sudo) to run: $*" >&2; return 1; fi
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Build dependencies: Vectorscan (libhs), cmake (zlib-ng), pkg-config and the system OpenSSL.
ensure_build_deps() {
  local missing=()
  command -v cmake >/dev/null || missing+=(cmake)
  command -v pkg-config >/dev/null || missing+=(pkg-config)
  command -v cc >/dev/null || missing+=(build-essential)
  if ! pkg-config --exists openssl 2>/dev/null; then missing+=(libssl-dev); fi
  if ! pkg-config --exists libhs 2>/dev/null; then missing+=(libvectorscan-dev); fi
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing build dependencies: ${missing[*]}"
    apt_install "${missing[@]}"
  fi
  # Link Debian's OpenSSL instead of compiling one (also set in .cargo/config.toml).
  export OPENSSL_NO_VENDOR=1
}

ensure_nextest() {
  if ! cargo nextest --version >/dev/null 2>&1; then
    echo "installing cargo-nextest"
    cargo install --locked cargo-nextest
  fi
}

# Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (trust auth, user postgres), started
# when they are not running and installed when they are missing.
ensure_services() {
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    command -v redis-server >/dev/null || apt_install redis-server redis-tools
    echo "starting redis-server on 127.0.0.1:6379"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --logfile /tmp/sluice-redis.log
  fi
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
      apt_install postgresql postgresql-client
    fi
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    if ! grep -q "sluice-tests" "$hba" 2>/dev/null; then
      # Local test server: trust connections from loopback, as on our machines.
      as_root sh -c "printf '%s\n' '# sluice-tests' 'host all all 127.0.0.1/32 trust' 'host all all ::1/128 trust' | cat - '$hba' > '$hba.new' && mv '$hba.new' '$hba'"
    fi
    echo "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  fi
  for _ in $(seq 1 50); do
    if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432; then
      return 0
    fi
    sleep 0.2
  done
  echo "Redis or PostgreSQL did not come up" >&2
  return 1
}
