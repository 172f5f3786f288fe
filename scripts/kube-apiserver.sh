#!/usr/bin/env bash
# A real Kubernetes API server (v1.20.2) with etcd, on 127.0.0.1, for tests of the
# Kubernetes integration (autoscaler, RBAC, manifests). Everything comes from Debian's
# package archive: kube-apiserver is built from the `kubernetes` *source* package (full tree
# with vendor/) with Debian's Go 1.19, etcd is Debian's `etcd-server` binary. Only apt's
# ordinary client is used, with a private configuration under the cache (/etc/apt is left
# alone). No kubelet, scheduler or controller-manager: objects are stored and served, no
# Pod ever runs, Deployments get no ReplicaSets.
#
# Usage:
#   scripts/kube-apiserver.sh build                    build once into $DLP_CACHE/k8s/bin (cached)
#   scripts/kube-apiserver.sh start DIR [AUTHZ]        start etcd + kube-apiserver, data in DIR;
#                                                      prints DIR/kubeconfig when ready
#   scripts/kube-apiserver.sh stop DIR                 stop them (kills the pids in DIR/pids)
# AUTHZ (or env DLP_KUBE_AUTHZ): AlwaysAllow (default) or RBAC. With RBAC the kubeconfig's
# user `admin` is in group system:masters (cluster-admin); service accounts get only what
# their Roles grant (tokens: `kubectl create token SA`, the TokenRequest API).
# DIR after start: kubeconfig, token (the admin bearer token), ca.crt, pids (kube-apiserver
# first, then etcd), etcd.log, kube-apiserver.log. Every start begins with an empty etcd.
# API level 1.20: server-side apply (application/apply-patch+yaml) on deployments/NAME/scale
# is accepted but needs force=true there: a 1.20 Scale carries no managedFields, so its
# fields always belong to "before-first-apply" and a changed value conflicts (409) without
# force (scale ownership is tracked from Kubernetes 1.22 on, kubernetes/kubernetes#98377).
set -euo pipefail
source "$(dirname "$0")/env.sh"

K8S="$DLP_CACHE/k8s"
BIN="$K8S/bin"
STAMP="$K8S/.built"

log() { echo "kube-apiserver: $*" >&2; }
die() {
  echo "kube-apiserver: error: $*" >&2
  exit 1
}

# --- build --------------------------------------------------------------------------------

is_built() { [ -f "$STAMP" ] && [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/etcd" ]; }

# apt-get with a private configuration: Debian bookworm's binary and source indexes, lists
# and downloads under $K8S/apt. Nothing is installed; packages are unpacked with dpkg-deb.
private_apt() {
  local a="$K8S/apt"
  apt-get -q \
    -o Dir::Etc::sourcelist="$a/sources.list" -o Dir::Etc::sourceparts="$a/sources.list.d" \
    -o Dir::State::Lists="$a/lists" -o Dir::Cache="$a/cache" \
    -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= \
    -o APT::Sandbox::User="$(id -un)" "$@"
}

build() {
  if is_built; then return 0; fi
  mkdir -p "$K8S"
  # One build at a time (concurrent test processes); the winner builds, the others wait.
  exec 9>"$K8S/.lock"
  flock 9
  if is_built; then return 0; fi

  # hack/lib/golang.sh copies the code generators with rsync.
  if ! command -v rsync >/dev/null 2>&1; then
    log "installing rsync (used by Kubernetes' make gen_openapi)"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq >/dev/null
    $SUDO apt-get install -y -qq rsync >/dev/null
  fi

  # Start from a clean slate: a half-finished earlier attempt is thrown away, and so are the
  # work trees if this one fails (only build.log stays).
  clean_work() { rm -rf "$K8S/apt" "$K8S/dl" "$K8S/root" "$K8S/work"; }
  clean_work
  rm -rf "$BIN"

  # The build needs about 3.3 GB at its peak (sources, Go toolchain, Go's build cache); on a
  # shared disk it stops early rather than fill it up.
  local free_mb
  free_mb="$(df -Pm "$K8S" | awk 'NR == 2 {print $4}')"
  if [ "$free_mb" -lt 4000 ]; then
    die "only ${free_mb} MB free on the disk of $K8S; the build needs about 3.5 GB"
  fi
  trap clean_work EXIT
  mkdir -p "$K8S/apt/lists/partial" "$K8S/apt/cache/archives/partial" \
    "$K8S/apt/sources.list.d" "$K8S/dl" "$K8S/root" "$K8S/work" "$BIN"
  cat >"$K8S/apt/sources.list" <<'EOF'
deb http://deb.debian.org/debian bookworm main
deb-src http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
  local buildlog="$K8S/build.log"
  : >"$buildlog"
  log "downloading Debian's kubernetes source, golang-1.19, etcd-server (private apt config in $K8S/apt)"
  private_apt update >>"$buildlog" 2>&1 || { tail -20 "$buildlog" >&2; die "apt-get update failed"; }
  (
    cd "$K8S/dl"
    private_apt source --download-only kubernetes
    private_apt download golang-1.19-go golang-1.19-src etcd-server \
      golang-github-modern-go-reflect2-dev
  ) >>"$buildlog" 2>&1 || { tail -20 "$buildlog" >&2; die "download failed"; }

  # The .debs unpacked into $K8S/root (nothing installed). Go toolchain: golang-1.19-go's
  # GOROOT links to golang-1.19-src by relative paths, so both land in the same tree.
  local deb
  for deb in "$K8S"/dl/*.deb; do dpkg-deb -x "$deb" "$K8S/root" && rm "$deb"; done
  local goroot="$K8S/root/usr/lib/go-1.19"
  cp "$K8S/root/usr/bin/etcd" "$BIN/etcd.tmp"

  # The source tree, unpacked at its GOPATH import path (GOPATH-mode build, as Debian does).
  local gopath="$K8S/work/gopath"
  local src="$gopath/src/k8s.io/kubernetes"
  mkdir -p "$(dirname "$src")"
  local dsc
  dsc="$(echo "$K8S"/dl/kubernetes_*.dsc)"
  dpkg-source -x "$dsc" "$src" >>"$buildlog" 2>&1 || { tail -20 "$buildlog" >&2; die "dpkg-source failed"; }
  rm -rf "$K8S/apt" "$K8S"/dl/kubernetes_*.tar.*
  # Package version 1.20.5+really1.20.2-1.1+deb12u1 -> v1.20.2 (reported by /version).
  local pkgver kver
  pkgver="$(sed -n 's/^Version: //p' "$dsc")"
  kver="${pkgver##*really}"
  kver="v${kver%%-*}"
  log "building kube-apiserver $kver ($pkgver) with $("$goroot/bin/go" version | cut -d' ' -f3) (about 10 min on 2 cores; log: $buildlog)"

  # Fix 1: the vendored reflect2 1.0.1 crashes under Go >= 1.18; use Debian's 1.0.2.
  rm -rf "$src/vendor/github.com/modern-go/reflect2"
  cp -r "$K8S/root/usr/share/gocode/src/github.com/modern-go/reflect2" "$src/vendor/github.com/modern-go/"

  (
    cd "$src"
    export PATH="$goroot/bin:$PATH" GOROOT="$goroot" GOPATH="$gopath"
    export GOCACHE="$K8S/work/gocache" GOTMPDIR="$K8S/work/tmp"
    mkdir -p "$GOTMPDIR"
    export GO111MODULE=off CGO_ENABLED=0 GOFLAGS='' HOME="$K8S/work"
    # Fix 2: pkg/generated/openapi is generated at build time, not shipped.
    make gen_openapi
    # Version stamps, as hack/lib/version.sh sets them (`--version` reads component-base's,
    # the /version endpoint client-go's); the git commit is already in the tarball.
    local major minor pkg flags=(-s -w)
    major="${kver#v}"; major="${major%%.*}"
    minor="${kver#v*.}"; minor="${minor%%.*}"
    for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
      pkg="k8s.io/kubernetes/vendor/$pkg"
      flags+=(-X "$pkg.gitVersion=$kver" -X "$pkg.gitMajor=$major" -X "$pkg.gitMinor=$minor"
        -X "$pkg.gitTreeState=clean" -X "$pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)")
    done
    go build -o "$BIN/kube-apiserver" -ldflags "${flags[*]}" k8s.io/kubernetes/cmd/kube-apiserver
  ) >>"$buildlog" 2>&1 || { tail -30 "$buildlog" >&2; die "build failed (full log: $buildlog)"; }
  mv "$BIN/etcd.tmp" "$BIN/etcd"
  "$BIN/kube-apiserver" --version >&2

  # Keep only the binaries (~130 MB); sources, toolchain and caches take up to 3.3 GB. A rebuild
  # (stamp removed) downloads and builds again.
  clean_work
  trap - EXIT
  printf 'kubernetes %s\netcd %s\n' "$pkgver" "$("$BIN/etcd" --version | sed -n 's/^etcd Version: //p')" >"$STAMP"
  log "built $BIN/kube-apiserver and $BIN/etcd"
}

# --- start / stop -------------------------------------------------------------------------

# N free TCP ports on 127.0.0.1, chosen by the kernel (bind to port 0). A port could still be
# taken between this and the server's bind; start() retries with new ports when that happens.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# CA, serving cert for 127.0.0.1/localhost, service-account key pair, admin token.
make_credentials() {
  local d="$1"
  # ECDSA P-256 keys: generated in milliseconds (RSA takes seconds on a busy machine).
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
  openssl req -x509 "${ec[@]}" -days 3650 -subj "/CN=dlp-test-ca" \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  openssl req "${ec[@]}" -subj "/CN=kube-apiserver" \
    -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
  printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth" \
    "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc" \
    >"$d/server.ext"
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 3650 -extfile "$d/server.ext" -out "$d/server.crt" 2>/dev/null
  # Service-account token signing key (ES256).
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$d/sa.key" 2>/dev/null
  openssl pkey -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  openssl rand -hex 24 >"$d/token"
  # Static token file: token,user,uid,"groups".
  printf '%s,admin,admin,"system:masters"\n' "$(cat "$d/token")" >"$d/tokens.csv"
  chmod 600 "$d"/*.key "$d/token" "$d/tokens.csv"
}

# Is this pid alive (not a zombie) and one of ours (its command line names DIR)?
ours() {
  local pid="$1" dir="$2"
  [ -r "/proc/$pid/cmdline" ] || return 1
  [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$dir/"
}

stop() {
  local dir="${1:?usage: $0 stop DIR}"
  [ -d "$dir" ] || return 0
  dir="$(cd "$dir" && pwd)"
  [ -f "$dir/pids" ] || return 0
  local pid i
  # kube-apiserver first, then etcd; each gets 10 s after SIGTERM, then SIGKILL.
  while read -r pid; do
    [ -n "$pid" ] || continue
    ours "$pid" "$dir" || continue
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 100); do
      ours "$pid" "$dir" || break
      [ "$i" = 100 ] && kill -KILL "$pid" 2>/dev/null || true
      sleep 0.1
    done
  done <"$dir/pids"
  rm -f "$dir/pids"
}

# One attempt at starting both servers; returns 2 if a port was taken (caller retries).
start_once() {
  local dir="$1" authz="$2"
  local ports etcd_port peer_port api_port
  ports="$(free_ports 3)"
  read -r etcd_port peer_port api_port <<<"$ports"
  : >"$dir/pids"
  rm -rf "$dir/etcd" # every start begins with an empty cluster

  # Detached (own session, stdio to files): they outlive this script and its caller.
  setsid "$BIN/etcd" --name dlp --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "dlp=http://127.0.0.1:$peer_port" \
    --logger zap --log-level warn \
    </dev/null >"$dir/etcd.log" 2>&1 &
  local etcd_pid=$!

  # The ServiceAccount admission plugin is off: it rejects Pods whose namespace has no
  # `default` ServiceAccount, which only kube-controller-manager (not run here) creates.
  setsid "$BIN/kube-apiserver" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$api_port" \
    --insecure-port=0 --etcd-servers="http://127.0.0.1:$etcd_port" \
    --cert-dir="$dir/certs" --tls-cert-file="$dir/server.crt" --tls-private-key-file="$dir/server.key" \
    --token-auth-file="$dir/tokens.csv" --authorization-mode="$authz" \
    --service-account-key-file="$dir/sa.pub" --service-account-signing-key-file="$dir/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range=10.96.0.0/16 --allow-privileged=true \
    --disable-admission-plugins=ServiceAccount --profiling=false --v=1 \
    </dev/null >"$dir/kube-apiserver.log" 2>&1 &
  local api_pid=$!
  printf '%s\n%s\n' "$api_pid" "$etcd_pid" >"$dir/pids"

  local token ca_data
  token="$(cat "$dir/token")"
  ca_data="$(base64 -w0 <"$dir/ca.crt")"
  cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: dlp-test
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority-data: $ca_data
users:
- name: admin
  user:
    token: $token
contexts:
- name: dlp-test
  context:
    cluster: dlp-test
    user: admin
    namespace: default
current-context: dlp-test
EOF
  chmod 600 "$dir/kubeconfig"

  # Ready when /readyz says ok (etcd connected, bootstrap RBAC and priority levels in place).
  local i
  for i in $(seq 600); do
    if [ "$(curl -s --max-time 2 --cacert "$dir/ca.crt" -H "Authorization: Bearer $token" \
      "https://127.0.0.1:$api_port/readyz" 2>/dev/null)" = ok ]; then
      return 0
    fi
    if ! ours "$etcd_pid" "$dir" || ! ours "$api_pid" "$dir"; then break; fi
    [ "$i" -lt 600 ] && sleep 0.1
  done
  stop "$dir"
  if grep -qs "address already in use" "$dir/etcd.log" "$dir/kube-apiserver.log"; then return 2; fi
  return 1
}

start() {
  local dir="${1:?usage: $0 start DIR [AlwaysAllow|RBAC]}"
  local authz="${2:-${DLP_KUBE_AUTHZ:-AlwaysAllow}}"
  case "$authz" in AlwaysAllow | RBAC) ;; *) die "authorization mode must be AlwaysAllow or RBAC, not $authz" ;; esac
  is_built || die "not built: run $0 build (or scripts/setup.sh) first"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if [ -f "$dir/pids" ]; then
    local pid
    while read -r pid; do
      ours "$pid" "$dir" && die "already running in $dir (pid $pid); stop it first"
    done <"$dir/pids"
  fi
  make_credentials "$dir"
  local attempt rc
  for attempt in 1 2 3; do
    rc=0
    start_once "$dir" "$authz" || rc=$?
    case "$rc" in
      0)
        log "ready: https://$(sed -n 's|.*server: https://||p' "$dir/kubeconfig") ($authz)"
        echo "$dir/kubeconfig"
        return 0
        ;;
      2) log "a port was taken (attempt $attempt), retrying with new ports" ;;
      *) break ;;
    esac
  done
  die "not started in $dir (a server exited, or /readyz was not ok within 60 s)
--- etcd.log (tail) ---
$(tail -15 "$dir/etcd.log" 2>/dev/null)
--- kube-apiserver.log (tail) ---
$(tail -25 "$dir/kube-apiserver.log" 2>/dev/null)"
}

case "${1:-}" in
  build) build ;;
  start) start "${2:-}" "${3:-}" ;;
  stop) stop "${2:-}" ;;
  *)
    echo "usage: $0 build | start DIR [AlwaysAllow|RBAC] | stop DIR" >&2
    exit 2
    ;;
esac
