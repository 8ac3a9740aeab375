#!/usr/bin/env bash
# Makes a self-signed TLS certificate for trying im-server's --tls-listen:
#   scripts/make-cert.sh DIR [NAME-OR-IP ...]     (default names: localhost 127.0.0.1)
# writes DIR/cert.pem and DIR/key.pem (P-256, valid 365 days). Clients trust it with
# --ca DIR/cert.pem. It is a leaf certificate (CA:FALSE), as TLS libraries require of a
# server's own certificate.
set -euo pipefail
dir=${1:?usage: make-cert.sh DIR [NAME-OR-IP ...]}
shift
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(localhost 127.0.0.1)
san=""
for n in "${names[@]}"; do
    if [[ $n =~ ^[0-9.]+$ || $n == *:* ]]; then san+="IP:$n,"; else san+="DNS:$n,"; fi
done
mkdir -p "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
    -subj "/CN=${names[0]}" -addext "subjectAltName=${san%,}" \
    -addext "basicConstraints=critical,CA:FALSE" -addext "extendedKeyUsage=serverAuth" \
    -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
chmod 600 "$dir/key.pem"
echo "wrote $dir/cert.pem and $dir/key.pem for ${names[*]}"
