# Shared by run.sh and soak.sh (sourced, not run): a work dir cleaned up at exit, free
# ports, and the backends every load test needs: the echo upstream (`tollgate echo`),
# a private redis-server, and a gateway config with a metered and a public route.
# Sets: work, pids, bin, up (upstream port), rp (redis port), secret, $work/gw.yaml.

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

scripts/ensure-deps.sh --loadtest
cargo build --release --quiet --bin tollgate --example bare_proxy
bin=target/release/tollgate

up=$(free_port) rp=$(free_port)
$bin echo --listen 127.0.0.1:"$up" 2>/dev/null & pids+=($!)
redis-server --port "$rp" --bind 127.0.0.1 --save "" --appendonly no --maxclients 20000 >/dev/null & pids+=($!)
wait_port "$up"; wait_port "$rp"
# A Redis Cluster of three masters (no replicas: throughput, not failover).
cluster_nodes=""
cluster_addrs=()
for _ in 1 2 3; do
  cp=$(free_port) cbus=$(free_port)
  redis-server --port "$cp" --cluster-port "$cbus" --bind 127.0.0.1 --cluster-enabled yes \
    --cluster-config-file "$work/nodes-$cp.conf" --dir "$work" --save "" --appendonly no \
    --maxclients 20000 >/dev/null & pids+=($!)
  wait_port "$cp"
  cluster_addrs+=("127.0.0.1:$cp")
  cluster_nodes+="${cluster_nodes:+,}redis://127.0.0.1:$cp/"
done
redis-cli --cluster create "${cluster_addrs[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
for _ in $(seq 200); do
  redis-cli -p "${cluster_addrs[0]#*:}" cluster info | grep -q cluster_state:ok && break
  sleep 0.05
done
secret=loadtest-secret-0123456789abcdef0123456789
cat > "$work/gw.yaml" <<YAML
threads: 2
grace_period_secs: 0
auth: { secret: $secret }
services:
  - name: echo
    upstream: http://127.0.0.1:$up
    endpoints:
      - { method: GET, path: "/*", credits: 1 }
  - name: priced
    upstream: http://127.0.0.1:$up
    endpoints:
      - { method: GET, path: "/*", credits: "1 + int(request.query.pages)" }
  - name: settled
    upstream: http://127.0.0.1:$up
    endpoints:
      - { method: GET, path: "/*", credits: 1, reserve: 5, settle: { json: "response.body.body_bytes + 1" } }
  - name: open
    upstream: http://127.0.0.1:$up
    public: true
    endpoints:
      - { method: GET, path: "/*", credits: 0 }
tenants:
  - { id: load, credits: 1000000000000 }
YAML
