#!/usr/bin/env bash
# Set up a Vault (or OpenBao) server to issue meshgw's leaf certificates, the way an operator would.
#
#   VAULT_ADDR=https://vault:8200 VAULT_TOKEN=<admin token> scripts/vault-dev-setup.sh [setup]
#   scripts/vault-dev-setup.sh rotate-ca             # new CA issuer in the mount, NOT the default yet
#   scripts/vault-dev-setup.sh promote-issuer <id>   # make it the default: new leaves come from it
#
# `setup` is idempotent: run it again and it only re-applies roles, policies and tunes (which are
# plain overwrites); mounts, CAs, auth methods and an existing secret-id file are kept as they are.
# It talks to the server with the `bao` or `vault` CLI, whichever is on PATH, or with curl + jq.
#
# What it sets up (vault-nomad.md §1-2; the role mirrors Consul's own leaf-cert role, §1.3):
#   - PKI mount MESHGW_PKI_MOUNT, tuned to MESHGW_CA_TTL. MESHGW_CA_MODE=root generates a root CA in it;
#     MESHGW_CA_MODE=intermediate generates a root in MESHGW_PKI_ROOT_MOUNT and an intermediate in the
#     PKI mount, signed by it, imported with its chain (so sign answers carry the chain up to the root).
#   - PKI role MESHGW_PKI_ROLE: any name, URI SANs spiffe://<trust domain>/*, no CN needed, no_store.
#   - ACL policy MESHGW_POLICY: sign/issue with that role, renew and look up its own token.
#   - AppRole MESHGW_APPROLE_ROLE at auth/MESHGW_APPROLE_PATH (skip with MESHGW_APPROLE_PATH=none).
#   - JWT auth at auth/MESHGW_JWT_PATH (Nomad's default path jwt-nomad) with role MESHGW_JWT_ROLE, when
#     MESHGW_JWT_PUBKEY_FILE (PEM public key(s)) or MESHGW_JWKS_URL (Nomad: https://<nomad>:4646/.well-known/jwks.json)
#     is given.
#   - With MESHGW_OUT_DIR: writes ca.pem (the trust bundle), approle-role-id and approle-secret-id (0600,
#     only created when missing) there, for meshgw's certificates.vault.auth.{role_id_file,secret_id_file}.
#
# Settings (environment; defaults in brackets):
#   VAULT_ADDR | BAO_ADDR, VAULT_TOKEN | BAO_TOKEN (required), VAULT_CACERT, VAULT_NAMESPACE
#   MESHGW_TRUST_DOMAIN [meshgw.consul]     MESHGW_CA_MODE [root]            MESHGW_CA_KEY_TYPE [ec]
#   MESHGW_PKI_MOUNT [pki]                  MESHGW_PKI_ROOT_MOUNT [pki-root] MESHGW_CA_TTL [87600h]
#   MESHGW_INT_TTL [43800h]                 MESHGW_PKI_ROLE [meshgw]         MESHGW_ROLE_KEY_TYPE [any]
#   MESHGW_LEAF_TTL [72h]                   MESHGW_LEAF_MAX_TTL [MESHGW_LEAF_TTL]
#   MESHGW_POLICY [meshgw-pki]              MESHGW_TOKEN_TTL [1h]            MESHGW_TOKEN_MAX_TTL [24h]
#   MESHGW_TOKEN_PERIOD [unset]             MESHGW_APPROLE_PATH [approle]    MESHGW_APPROLE_ROLE [meshgw]
#   MESHGW_JWT_PATH [jwt-nomad]             MESHGW_JWT_ROLE [meshgw]         MESHGW_JWT_AUDIENCE [vault.io]
#   MESHGW_JWT_USER_CLAIM [/nomad_job_id]   MESHGW_JWT_PUBKEY_FILE | MESHGW_JWKS_URL [+ MESHGW_JWKS_CA_FILE]
#   MESHGW_OUT_DIR [unset]                  MESHGW_SETUP_CLIENT [auto: bao, vault, then curl]
set -euo pipefail

die() { echo "vault-dev-setup: $*" >&2; exit 1; }
say() { echo "vault-dev-setup: $*"; }

ADDR=${VAULT_ADDR:-${BAO_ADDR:-}}
TOKEN=${VAULT_TOKEN:-${BAO_TOKEN:-}}
[ -n "$ADDR" ] || die "set VAULT_ADDR (or BAO_ADDR) to the server's address"
[ -n "$TOKEN" ] || die "set VAULT_TOKEN (or BAO_TOKEN) to a token allowed to mount and configure"
ADDR=${ADDR%/}
CACERT=${VAULT_CACERT:-${BAO_CACERT:-}}
NAMESPACE=${VAULT_NAMESPACE:-${BAO_NAMESPACE:-}}

TD=${MESHGW_TRUST_DOMAIN:-meshgw.consul}
CA_MODE=${MESHGW_CA_MODE:-root}
CA_KEY_TYPE=${MESHGW_CA_KEY_TYPE:-ec}
MOUNT=${MESHGW_PKI_MOUNT:-pki}
ROOT_MOUNT=${MESHGW_PKI_ROOT_MOUNT:-pki-root}
CA_TTL=${MESHGW_CA_TTL:-87600h}
INT_TTL=${MESHGW_INT_TTL:-43800h}
ROLE=${MESHGW_PKI_ROLE:-meshgw}
ROLE_KEY_TYPE=${MESHGW_ROLE_KEY_TYPE:-any}
LEAF_TTL=${MESHGW_LEAF_TTL:-72h}
LEAF_MAX_TTL=${MESHGW_LEAF_MAX_TTL:-$LEAF_TTL}
POLICY=${MESHGW_POLICY:-meshgw-pki}
TOKEN_TTL=${MESHGW_TOKEN_TTL:-1h}
TOKEN_MAX_TTL=${MESHGW_TOKEN_MAX_TTL:-24h}
TOKEN_PERIOD=${MESHGW_TOKEN_PERIOD:-}
APPROLE_PATH=${MESHGW_APPROLE_PATH:-approle}
APPROLE_ROLE=${MESHGW_APPROLE_ROLE:-meshgw}
JWT_PATH=${MESHGW_JWT_PATH:-jwt-nomad}
JWT_ROLE=${MESHGW_JWT_ROLE:-meshgw}
JWT_AUDIENCE=${MESHGW_JWT_AUDIENCE:-vault.io}
JWT_USER_CLAIM=${MESHGW_JWT_USER_CLAIM:-/nomad_job_id}
JWT_PUBKEY_FILE=${MESHGW_JWT_PUBKEY_FILE:-}
JWKS_URL=${MESHGW_JWKS_URL:-}
JWKS_CA_FILE=${MESHGW_JWKS_CA_FILE:-}
OUT_DIR=${MESHGW_OUT_DIR:-}

case "$CA_MODE" in root|intermediate) ;; *) die "MESHGW_CA_MODE=$CA_MODE (expected root or intermediate)";; esac

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# ---------------------------------------------------------------- client: bao / vault CLI, or curl + jq

CLIENT=${MESHGW_SETUP_CLIENT:-auto}
if [ "$CLIENT" = auto ]; then
    if command -v bao >/dev/null 2>&1; then CLIENT=bao
    elif command -v vault >/dev/null 2>&1; then CLIENT=vault
    else CLIENT=curl; fi
fi
case "$CLIENT" in
    bao|vault) command -v "$CLIENT" >/dev/null 2>&1 || die "MESHGW_SETUP_CLIENT=$CLIENT but it is not on PATH" ;;
    curl) { command -v curl && command -v jq; } >/dev/null 2>&1 || die "the curl client needs curl and jq" ;;
    *) die "MESHGW_SETUP_CLIENT=$CLIENT (expected auto, bao, vault or curl)" ;;
esac
if [ "$CLIENT" != curl ]; then
    # Both CLIs read their own prefix; OpenBao's also reads VAULT_*, but say it once for both.
    export VAULT_ADDR="$ADDR" VAULT_TOKEN="$TOKEN" BAO_ADDR="$ADDR" BAO_TOKEN="$TOKEN"
    if [ -n "$CACERT" ]; then export VAULT_CACERT="$CACERT" BAO_CACERT="$CACERT"; fi
    if [ -n "$NAMESPACE" ]; then export VAULT_NAMESPACE="$NAMESPACE" BAO_NAMESPACE="$NAMESPACE"; fi
fi

# cli ARGS...: the CLI, its warnings (stderr) shown only when it fails.
cli() {
    if "$CLIENT" "$@" 2>"$TMP/err"; then return 0; fi
    cat "$TMP/err" >&2
    return 1
}

# curl METHOD PATH [JSON]: prints the body of a 2xx answer, or the server's errors on stderr and fails.
http() {
    local method=$1 path=$2 body=${3:-} code
    local args=(-sS -o "$TMP/body" -w '%{http_code}' -X "$method" -H "X-Vault-Token: $TOKEN" -H "X-Vault-Request: true")
    [ -n "$NAMESPACE" ] && args+=(-H "X-Vault-Namespace: $NAMESPACE")
    [ -n "$CACERT" ] && args+=(--cacert "$CACERT")
    [ -n "$body" ] && args+=(-H "Content-Type: application/json" --data-binary "$body")
    code=$(curl "${args[@]}" "$ADDR/v1/$path") || return 1
    if [ "${code:0:1}" != 2 ]; then
        echo "$method $path: HTTP $code: $(jq -r '(.errors // []) | join("; ")' "$TMP/body" 2>/dev/null || cat "$TMP/body")" >&2
        return 1
    fi
    cat "$TMP/body"
}

# key=value ... -> a JSON object of strings (Vault parses strings into its field types); @file reads a file.
kv_json() {
    local args=() filter='{}' i=0 kv k v
    for kv in "$@"; do
        k=${kv%%=*} v=${kv#*=}
        if [ "${v:0:1}" = @ ]; then args+=(--rawfile "v$i" "${v:1}"); else args+=(--arg "v$i" "$v"); fi
        args+=(--arg "k$i" "$k")
        filter+=" | .[\$k$i] = \$v$i"
        i=$((i + 1))
    done
    jq -n "${args[@]}" "$filter"
}

# exists PATH: true when a read of PATH succeeds.
exists() {
    if [ "$CLIENT" = curl ]; then http GET "$1" >/dev/null 2>&1; else cli read "$1" >/dev/null 2>&1; fi
}

# count_keys PATH: number of entries a LIST returns (0 when none).
count_keys() {
    if [ "$CLIENT" = curl ]; then
        (http LIST "$1" 2>/dev/null || echo '{}') | jq '.data.keys // [] | length'
    else
        "$CLIENT" list "$1" 2>/dev/null | tail -n +3 | grep -c . || true
    fi
}

# list_keys PATH: one key per line.
list_keys() {
    if [ "$CLIENT" = curl ]; then
        (http LIST "$1" 2>/dev/null || echo '{}') | jq -r '.data.keys // [] | .[]'
    else
        "$CLIENT" list "$1" 2>/dev/null | tail -n +3 || true
    fi
}

# read_field PATH FIELD: one field of a read's data, as text.
read_field() {
    if [ "$CLIENT" = curl ]; then http GET "$1" | jq -r --arg f "$2" '.data[$f] // empty'
    else cli read -field="$2" "$1"; fi
}

# write PATH [k=v ...]: discard the answer.
write() {
    local path=$1
    shift
    if [ "$CLIENT" = curl ]; then http POST "$path" "$(kv_json "$@")" >/dev/null
    else cli write -force "$path" "$@" >/dev/null; fi
}

# write_field FIELD PATH [k=v ...]: one field of the answer's data, as text.
write_field() {
    local field=$1 path=$2
    shift 2
    if [ "$CLIENT" = curl ]; then http POST "$path" "$(kv_json "$@")" | jq -r --arg f "$field" '.data[$f] // empty'
    else cli write -force -field="$field" "$path" "$@"; fi
}

# ---------------------------------------------------------------- steps

check_server() {
    local health
    if command -v curl >/dev/null 2>&1; then
        health=$(curl -sS ${CACERT:+--cacert "$CACERT"} -o /dev/null -w '%{http_code}' "$ADDR/v1/sys/health") ||
            die "$ADDR: unreachable"
    else
        # `status` exits 2 when sealed, 1 on errors (both CLIs).
        if "$CLIENT" status >/dev/null 2>&1; then health=200; else health=$([ $? -eq 2 ] && echo 503 || echo error); fi
    fi
    case "$health" in
        200|429|473) ;;
        503) die "$ADDR is sealed (sys/health 503): unseal it first" ;;
        501) die "$ADDR is not initialized (sys/health 501): run operator init first" ;;
        *) die "$ADDR: sys/health answered $health" ;;
    esac
    exists auth/token/lookup-self || die "$ADDR: the token is not accepted (auth/token/lookup-self failed)"
    say "server $ADDR${NAMESPACE:+ namespace $NAMESPACE}, client $CLIENT, trust domain $TD"
}

enable_pki() {  # MOUNT MAX_TTL
    if exists "sys/mounts/$1"; then
        say "pki mount $1/ exists"
    else
        write "sys/mounts/$1" type=pki description="meshgw leaf certificates (spiffe://$TD)"
        say "pki mount $1/ enabled"
    fi
    write "sys/mounts/$1/tune" max_lease_ttl="$2"
    say "pki mount $1/ tuned: max_lease_ttl=$2"
}

# A CA's name: its time and a random suffix, so two CAs made in the same second (setup, then rotate-ca at once)
# never share a subject. Same-named roots make a log line, or anything matching the issuer's name, ambiguous.
ca_stamp() {
    echo "$(date -u +%Y%m%d%H%M%S)-$RANDOM"
}

new_root() {  # MOUNT PATH(root/generate/internal|issuers/generate/root/internal) -> prints issuer id
    local stamp
    stamp=$(ca_stamp)
    write_field issuer_id "$1/$2" common_name="meshgw root CA $TD $stamp" \
        uri_sans="spiffe://$TD" key_type="$CA_KEY_TYPE" ttl="$CA_TTL" issuer_name="root-$stamp"
}

# new_intermediate PATH(intermediate/generate/internal|issuers/generate/intermediate/internal) IMPORT(intermediate/set-signed|issuers/import/bundle)
# -> prints the new intermediate issuer id. The bundle imported holds the intermediate and the root, so sign answers
# carry the whole chain and meshgw can find the root it must trust.
new_intermediate() {
    local id ids bundle_field=certificate
    [ "$2" = issuers/import/bundle ] && bundle_field=pem_bundle
    write_field csr "$MOUNT/$1" common_name="meshgw intermediate CA $TD $(ca_stamp)" \
        uri_sans="spiffe://$TD" key_type="$CA_KEY_TYPE" >"$TMP/int.csr"
    write_field certificate "$ROOT_MOUNT/root/sign-intermediate" csr=@"$TMP/int.csr" format=pem_bundle \
        ttl="$INT_TTL" use_csr_values=true >"$TMP/int-bundle.pem"
    # A list field prints as [a b] (CLI) or a JSON array (curl): keep the ids.
    ids=$(write_field imported_issuers "$MOUNT/$2" "$bundle_field"=@"$TMP/int-bundle.pem" | tr -d '[]",')
    # The imported issuer that has a key is the intermediate (the root arrives without its key).
    for id in $ids; do
        if [ -n "$(read_field "$MOUNT/issuer/$id" key_id)" ]; then
            echo "$id"
            return 0
        fi
    done
    die "$MOUNT: imported the intermediate but cannot find its issuer id (imported: ${ids:-none})"
}

setup_ca() {
    local n id
    if [ "$CA_MODE" = intermediate ]; then
        enable_pki "$ROOT_MOUNT" "$CA_TTL"
        n=$(count_keys "$ROOT_MOUNT/issuers")
        if [ "$n" -eq 0 ]; then
            id=$(new_root "$ROOT_MOUNT" root/generate/internal)
            say "root CA generated in $ROOT_MOUNT/ (issuer $id)"
        else
            say "root CA exists in $ROOT_MOUNT/ ($n issuer(s))"
        fi
        enable_pki "$MOUNT" "$INT_TTL"
    else
        enable_pki "$MOUNT" "$CA_TTL"
    fi
    n=$(count_keys "$MOUNT/issuers")
    if [ "$n" -gt 0 ]; then
        say "CA exists in $MOUNT/ ($n issuer(s)); rotate it with: $0 rotate-ca"
    elif [ "$CA_MODE" = intermediate ]; then
        id=$(new_intermediate intermediate/generate/internal intermediate/set-signed)
        write "$MOUNT/config/issuers" default="$id"
        say "intermediate CA generated in $MOUNT/, signed by $ROOT_MOUNT/ (issuer $id, default)"
    else
        id=$(new_root "$MOUNT" root/generate/internal)
        say "root CA generated in $MOUNT/ (issuer $id, default)"
    fi
}

setup_role() {
    # Consul's leaf-cert role is the template (C:agent/connect/ca/provider_vault.go): any name, SPIFFE URI SANs,
    # no CN required, no_store. key_type=any lets meshgw choose its key; OpenBao also issues with it when the request
    # names key_type/key_bits (meshgw's issue mode does), Vault needs MESHGW_ROLE_KEY_TYPE=ec for issue mode.
    write "$MOUNT/roles/$ROLE" allow_any_name=true enforce_hostnames=false require_cn=false \
        allowed_uri_sans="spiffe://$TD/*" allow_ip_sans=false key_type="$ROLE_KEY_TYPE" ttl="$LEAF_TTL" \
        max_ttl="$LEAF_MAX_TTL" no_store=true generate_lease=false server_flag=true client_flag=true issuer_ref=default
    say "pki role $MOUNT/roles/$ROLE: uri sans spiffe://$TD/*, ttl $LEAF_TTL, max_ttl $LEAF_MAX_TTL, key_type $ROLE_KEY_TYPE"
}

setup_policy() {
    cat >"$TMP/policy.hcl" <<EOF
# meshgw: leaf certificates for spiffe://$TD services, and the upkeep of its own token.
path "$MOUNT/sign/$ROLE" {
  capabilities = ["create", "update"]
}
path "$MOUNT/issue/$ROLE" {
  capabilities = ["create", "update"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
EOF
    write "sys/policies/acl/$POLICY" policy=@"$TMP/policy.hcl"
    say "policy $POLICY: sign/issue with $MOUNT/roles/$ROLE, renew-self, lookup-self"
}

token_params() {
    local p=(token_policies="$POLICY" token_type=service token_ttl="$TOKEN_TTL" token_max_ttl="$TOKEN_MAX_TTL")
    [ -n "$TOKEN_PERIOD" ] && p+=(token_period="$TOKEN_PERIOD")
    printf '%s\n' "${p[@]}"
}

enable_auth() {  # PATH TYPE
    if exists "sys/auth/$1"; then
        say "auth method $1/ exists"
    else
        write "sys/auth/$1" type="$2" description="meshgw sidecars"
        say "auth method $1/ ($2) enabled"
    fi
}

setup_approle() {
    if [ "$APPROLE_PATH" = none ] || [ -z "$APPROLE_PATH" ]; then
        say "approle: skipped"
        return 0
    fi
    local params role_id
    mapfile -t params < <(token_params)
    enable_auth "$APPROLE_PATH" approle
    write "auth/$APPROLE_PATH/role/$APPROLE_ROLE" "${params[@]}" secret_id_ttl=0 bind_secret_id=true
    role_id=$(read_field "auth/$APPROLE_PATH/role/$APPROLE_ROLE/role-id" role_id)
    say "approle role $APPROLE_ROLE: role_id $role_id, token ttl $TOKEN_TTL (max $TOKEN_MAX_TTL)${TOKEN_PERIOD:+, period $TOKEN_PERIOD}"
    if [ -n "$OUT_DIR" ]; then
        printf '%s\n' "$role_id" >"$OUT_DIR/approle-role-id"
        if [ -s "$OUT_DIR/approle-secret-id" ]; then
            say "approle secret-id: $OUT_DIR/approle-secret-id exists, kept"
        else
            (umask 077 && write_field secret_id "auth/$APPROLE_PATH/role/$APPROLE_ROLE/secret-id" >"$OUT_DIR/approle-secret-id")
            say "approle secret-id: written to $OUT_DIR/approle-secret-id (mode 0600)"
        fi
    else
        say "approle secret-id: none written (set MESHGW_OUT_DIR, or: write -f auth/$APPROLE_PATH/role/$APPROLE_ROLE/secret-id)"
    fi
}

setup_jwt() {
    if [ -z "$JWT_PUBKEY_FILE" ] && [ -z "$JWKS_URL" ]; then
        say "jwt auth: skipped (set MESHGW_JWT_PUBKEY_FILE or MESHGW_JWKS_URL)"
        return 0
    fi
    local params
    mapfile -t params < <(token_params)
    enable_auth "$JWT_PATH" jwt
    if [ -n "$JWT_PUBKEY_FILE" ]; then
        [ -r "$JWT_PUBKEY_FILE" ] || die "MESHGW_JWT_PUBKEY_FILE=$JWT_PUBKEY_FILE: cannot read"
        write "auth/$JWT_PATH/config" jwt_validation_pubkeys=@"$JWT_PUBKEY_FILE" \
            jwt_supported_algs=RS256,ES256,EdDSA default_role="$JWT_ROLE"
        say "jwt auth $JWT_PATH/: validates with the public key(s) in $JWT_PUBKEY_FILE"
    else
        if [ -n "$JWKS_CA_FILE" ]; then
            write "auth/$JWT_PATH/config" jwks_url="$JWKS_URL" jwks_ca_pem=@"$JWKS_CA_FILE" \
                jwt_supported_algs=RS256,ES256,EdDSA default_role="$JWT_ROLE"
        else
            write "auth/$JWT_PATH/config" jwks_url="$JWKS_URL" jwt_supported_algs=RS256,ES256,EdDSA default_role="$JWT_ROLE"
        fi
        say "jwt auth $JWT_PATH/: validates with the keys at $JWKS_URL"
    fi
    # Nomad's workload identity claims (vault-nomad.md §2.3): the job is the user, audience vault.io.
    write "auth/$JWT_PATH/role/$JWT_ROLE" role_type=jwt bound_audiences="$JWT_AUDIENCE" \
        user_claim="$JWT_USER_CLAIM" user_claim_json_pointer=true "${params[@]}"
    say "jwt role $JWT_ROLE: audience $JWT_AUDIENCE, user claim $JWT_USER_CLAIM, policy $POLICY"
}

write_bundle() {
    [ -n "$OUT_DIR" ] || return 0
    local id mount=$MOUNT
    [ "$CA_MODE" = intermediate ] && mount=$ROOT_MOUNT
    : >"$OUT_DIR/ca.pem.tmp"
    for id in $(list_keys "$mount/issuers"); do
        read_field "$mount/issuer/$id/json" certificate >>"$OUT_DIR/ca.pem.tmp"
        echo >>"$OUT_DIR/ca.pem.tmp"
    done
    mv "$OUT_DIR/ca.pem.tmp" "$OUT_DIR/ca.pem"
    say "trust bundle (the CA certificates of $mount/) refreshed in $OUT_DIR/ca.pem"
}

setup() {
    check_server
    [ -z "$OUT_DIR" ] || mkdir -p "$OUT_DIR"
    setup_ca
    setup_role
    setup_policy
    setup_approle
    setup_jwt
    write_bundle
    cat <<EOF
vault-dev-setup: done. meshgw configuration:
  certificates:
    type: vault
    vault:
      address: $ADDR
      mount: $MOUNT
      role: $ROLE
      trust_domain: $TD
      auth: {method: approle, role_id_file: <dir>/approle-role-id, secret_id_file: <dir>/approle-secret-id}
      # or {method: jwt, jwt_file: \${NOMAD_SECRETS_DIR}/vault_default.jwt, path: $JWT_PATH, role: $JWT_ROLE}
      # or {method: token}: VAULT_TOKEN, or \${NOMAD_SECRETS_DIR}/vault_token under Nomad
EOF
}

rotate_ca() {
    check_server
    local id
    if [ "$CA_MODE" = intermediate ]; then
        id=$(new_intermediate issuers/generate/intermediate/internal issuers/import/bundle)
        say "new intermediate issuer $id in $MOUNT/, not the default yet (same root: nothing new to trust)"
        say "make it sign new leaves: $0 promote-issuer $id"
    else
        id=$(new_root "$MOUNT" issuers/generate/root/internal)
        say "new root issuer $id in $MOUNT/, not the default yet"
        say "meshgw sidecars add it to their trusted roots when they next list $MOUNT/issuers (at most a minute)"
        say "once every sidecar trusts it (/config: snapshot.tls.roots), make it sign new leaves: $0 promote-issuer $id"
    fi
    echo "$id"
}

promote_issuer() {
    [ -n "${1:-}" ] || die "promote-issuer needs an issuer id (see: list $MOUNT/issuers)"
    check_server
    write "$MOUNT/config/issuers" default="$1"
    say "issuer $1 is now the default of $MOUNT/: leaves renewed from now on come from it"
    say "keep the old issuer until every leaf it signed has expired (its sidecars still present them)"
}

case "${1:-setup}" in
    setup) setup ;;
    rotate-ca) rotate_ca ;;
    promote-issuer) promote_issuer "${2:-}" ;;
    -h|--help|help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' ;;
    *) die "unknown command $1 (expected setup, rotate-ca or promote-issuer ID)" ;;
esac
