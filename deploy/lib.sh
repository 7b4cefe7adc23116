# Helpers the deploy scripts source (not run on its own).

# Install Debian packages (with sudo unless root).
apt_install() {
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "$@"
}

# librdkafka's TLS (Kafka over SSL/SASL_SSL) links the system's OpenSSL: install its
# headers when they are missing.
ensure_openssl_headers() {
  pkg-config --exists openssl 2>/dev/null || apt_install libssl-dev pkg-config
}

# Wait until 127.0.0.1:PORT accepts connections (about 0.1 s × TRIES); if process PID
# dies first, print LOG and fail.
wait_for_port() {
  local port=$1 pid=$2 log=$3 tries=$4
  for _ in $(seq 1 "$tries"); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; return 1; }
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$port; see $log" >&2
  return 1
}
