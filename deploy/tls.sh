#!/bin/sh
# Makes the mutual-TLS material for ate on Kubernetes and prints it as two Secrets:
#   ateom-worker-tls  the workers' certificate (names *.ateom-<pool>.<ns>.svc.<domain> for each
#                     pool given), its key, and the CA of the clients let in (ca.crt)
#   ate-client-tls    ate serve's client certificate, its key, and the workers' CA (ca.crt)
# One CA signs both. Usage: deploy/tls.sh [-n NAMESPACE] [-d DOMAIN] POOL... | kubectl apply -f -
set -eu
ns=ate
domain=cluster.local
while getopts n:d: o; do
  case $o in n) ns=$OPTARG ;; d) domain=$OPTARG ;; *) exit 2 ;; esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || { echo "usage: $0 [-n NAMESPACE] [-d DOMAIN] POOL..." >&2; exit 2; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
  -subj "/CN=ate-ca" -keyout ca.key -out ca.crt 2>/dev/null
sans=""
for p in "$@"; do sans="${sans:+$sans,}DNS:*.ateom-$p.$ns.svc.$domain"; done
cert() { # name cn sans usage
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
    -keyout "$1.key" -out "$1.csr" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=%s\n' "$3" "$4" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
    -extfile "$1.ext" -out "$1.crt" 2>/dev/null
}
cert worker ateom-worker "$sans" serverAuth,clientAuth
cert client ate "DNS:ate-serve.$ns.svc.$domain" clientAuth
secret() { # name crt key
  printf -- '---\napiVersion: v1\nkind: Secret\nmetadata: { name: %s, namespace: %s }\ntype: kubernetes.io/tls\ndata:\n' "$1" "$ns"
  printf '  tls.crt: %s\n  tls.key: %s\n  ca.crt: %s\n' "$(base64 -w0 < "$2")" "$(base64 -w0 < "$3")" "$(base64 -w0 < ca.crt)"
}
secret ateom-worker-tls worker.crt worker.key
secret ate-client-tls client.crt client.key
