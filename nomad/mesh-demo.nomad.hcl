# Two services, "api" and "web", each with meshgw as its Consul Connect sidecar (Nomad 1.10+).
#
#   nomad job run -var trust_domain=$(curl -s $CONSUL_HTTP_ADDR/v1/connect/ca/roots | jq -r .TrustDomain) \
#                 -var vault_addr=$VAULT_ADDR nomad/mesh-demo.nomad.hcl
#
# How the sidecar is wired (vault-nomad.md §4.2):
# - Each group declares `connect { sidecar_service {} }`, so Nomad registers "<svc>-sidecar-proxy" in Consul
#   and sets NOMAD_UPSTREAM_ADDR_<name> for the app. meshgw therefore runs with register: false.
# - The proxy is a full task with kind = "connect-proxy:<svc>", not `sidecar_task`: Nomad then injects no
#   Envoy task, and only a full task may carry the `template`, `vault` and `identity` blocks meshgw needs
#   (sidecar_task cannot, N:nomad/job_endpoint_hook_connect.go). Nomad's envoy_bootstrap hook still runs for
#   the task kind, so the `consul` binary must be on the client's PATH; meshgw ignores the file it writes.
# - The sidecar's port is our own label "mesh" (sidecar_service.port), mapped to 21000 inside the bridge
#   namespace, so meshgw's inbound bind is a fixed number rather than an injected label.
# - Leaf certificates come from Vault's PKI through the job's `vault` block: Nomad logs in with the task's
#   workload identity (JWT, auth/jwt-nomad, vault-nomad.md §2.3) and hands meshgw the token as VAULT_TOKEN.
#   The mount and role sign under Consul's own intermediate (Consul Connect with Vault as its CA; the lab's
#   scripts/lab/server.sh sets both up with scripts/vault-dev-setup.sh), so meshgw's leaves chain to the
#   same roots as every other Connect sidecar.
# - meshgw.yaml is written by a `template` block from Nomad's runtime variables (vault-nomad.md §4.4), so the
#   command line is just `meshgw run -c local/meshgw.yaml`.

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "meshgw_wheel" {
  type        = string
  default     = "http://192.168.56.10:8000/meshgw-wheelhouse.tar.gz"
  description = "URL of meshgw's wheel (or a .tar.gz wheelhouse with its dependencies), fetched by an artifact block"
}

variable "trust_domain" {
  type        = string
  description = "Consul's Connect trust domain, <cluster-id>.consul (GET /v1/connect/ca/roots .TrustDomain)"
}

variable "vault_addr" {
  type    = string
  default = "http://192.168.56.10:8200"
}

variable "pki_mount" {
  type    = string
  default = "connect_inter"
}

variable "pki_role" {
  type    = string
  default = "meshgw"
}

job "mesh-demo" {
  datacenters = var.datacenters
  type        = "service"

  meta {
    trust_domain = var.trust_domain
  }

  update {
    max_parallel     = 1
    health_check     = "checks"
    min_healthy_time = "10s"
    auto_revert      = true
  }

  group "api" {
    count = 2

    network {
      mode = "bridge"
      port "mesh" {
        to = 21000
      }
    }

    service {
      name = "api"
      port = "8080"

      connect {
        sidecar_service {
          port = "mesh"
          proxy {
            local_service_address = "127.0.0.1"
            local_service_port    = 8080
          }
        }
      }
    }

    task "app" {
      driver = "exec"

      config {
        command = "/usr/bin/python3"
        args    = ["-m", "http.server", "8080", "--bind", "127.0.0.1", "--directory", "local"]
      }

      template {
        destination = "local/index.html"
        data        = "api answered from allocation {{ env \"NOMAD_ALLOC_ID\" }}\n"
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }

    # meshgw is not preinstalled on the clients: the wheel comes by artifact and goes into a venv in the
    # allocation directory (/alloc is the same path in every task's chroot, so the venv's scripts work there).
    task "meshgw-install" {
      driver = "exec"

      lifecycle {
        hook    = "prestart"
        sidecar = false
      }

      artifact {
        source      = var.meshgw_wheel
        destination = "local/wheels"
      }

      config {
        command = "/bin/sh"
        # Once per allocation (a restarted task finds the venv); --find-links: a wheelhouse needs no index.
        args = ["-c", "test -x \"$NOMAD_ALLOC_DIR/meshgw/bin/meshgw\" || { /usr/bin/python3 -m venv \"$NOMAD_ALLOC_DIR/meshgw\" && \"$NOMAD_ALLOC_DIR/meshgw/bin/pip\" install --quiet --find-links local/wheels local/wheels/meshgw-*.whl; } && \"$NOMAD_ALLOC_DIR/meshgw/bin/meshgw\" --version"]
      }

      resources {
        cpu    = 200
        memory = 256
      }
    }

    task "meshgw" {
      driver = "exec"
      kind   = "connect-proxy:api"
      # Longer than drain_timeout: SIGTERM drains open connections before meshgw exits 0.
      kill_timeout = "25s"

      lifecycle {
        hook    = "prestart"
        sidecar = true
      }

      config {
        command = "${NOMAD_ALLOC_DIR}/meshgw/bin/meshgw"
        args    = ["run", "-c", "local/meshgw.yaml"]
      }

      env {
        # Inside the bridge namespace 127.0.0.1 is the allocation's, not the node's: reach the node's agent.
        CONSUL_HTTP_ADDR = "${attr.unique.network.ip-address}:8500"
        VAULT_ADDR       = var.vault_addr
      }

      identity {
        name = "vault_default"
        aud  = ["vault.io"]
        ttl  = "1h"
      }

      # Nomad 1.7+ workload identity for Consul: Nomad logs in to Consul with it and hands meshgw the token as
      # secrets/consul_token and CONSUL_TOKEN, which meshgw reads (templates/consul-acl-policy.hcl.j2 renders the policy it needs).
      identity {
        name = "consul_default"
        aud  = ["consul.io"]
        ttl  = "1h"
      }

      vault {
        role = "meshgw"
        # A new token means a new process: meshgw reads VAULT_TOKEN once, at start.
        change_mode = "restart"
      }

      template {
        destination   = "local/meshgw.yaml"
        change_mode   = "signal"
        change_signal = "SIGHUP"
        data          = <<-EOT
          datacenter: {{ env "NOMAD_DC" }}
          mode: sidecar
          service: {name: api, address: 127.0.0.1, port: 8080}
          inbound: {bind: "0.0.0.0:{{ env "NOMAD_PORT_mesh" }}"}
          control_plane:
            type: consul
            default_intention_policy: deny
            consul: {register: false}
          certificates:
            type: vault
            vault:
              mount: ${var.pki_mount}
              role: ${var.pki_role}
              trust_domain: {{ env "NOMAD_META_trust_domain" }}
              auth: {method: token}
          admin: {bind: "127.0.0.1:19000"}
          drain_timeout: 5s
        EOT
      }

      shutdown_delay = "5s"

      resources {
        cpu    = 200
        memory = 128
      }
    }
  }

  group "web" {
    count = 1

    network {
      mode = "bridge"
      port "mesh" {
        to = 21000
      }
    }

    service {
      name = "web"
      port = "8080"

      connect {
        sidecar_service {
          port = "mesh"
          proxy {
            local_service_address = "127.0.0.1"
            local_service_port    = 8080
            upstreams {
              destination_name = "api"
              local_bind_port  = 9191
            }
          }
        }
      }
    }

    task "app" {
      driver = "exec"

      # A client that calls api through its local upstream port every few seconds (see nomad alloc logs).
      config {
        command = "/bin/sh"
        args    = ["-c", "while true; do curl -sS --max-time 5 http://${NOMAD_UPSTREAM_ADDR_api}/ || true; sleep 5; done"]
      }

      resources {
        cpu    = 50
        memory = 32
      }
    }

    # meshgw is not preinstalled on the clients: the wheel comes by artifact and goes into a venv in the
    # allocation directory (/alloc is the same path in every task's chroot, so the venv's scripts work there).
    task "meshgw-install" {
      driver = "exec"

      lifecycle {
        hook    = "prestart"
        sidecar = false
      }

      artifact {
        source      = var.meshgw_wheel
        destination = "local/wheels"
      }

      config {
        command = "/bin/sh"
        # Once per allocation (a restarted task finds the venv); --find-links: a wheelhouse needs no index.
        args = ["-c", "test -x \"$NOMAD_ALLOC_DIR/meshgw/bin/meshgw\" || { /usr/bin/python3 -m venv \"$NOMAD_ALLOC_DIR/meshgw\" && \"$NOMAD_ALLOC_DIR/meshgw/bin/pip\" install --quiet --find-links local/wheels local/wheels/meshgw-*.whl; } && \"$NOMAD_ALLOC_DIR/meshgw/bin/meshgw\" --version"]
      }

      resources {
        cpu    = 200
        memory = 256
      }
    }

    task "meshgw" {
      driver = "exec"
      kind   = "connect-proxy:web"
      # Longer than drain_timeout: SIGTERM drains open connections before meshgw exits 0.
      kill_timeout = "25s"

      lifecycle {
        hook    = "prestart"
        sidecar = true
      }

      config {
        command = "${NOMAD_ALLOC_DIR}/meshgw/bin/meshgw"
        args    = ["run", "-c", "local/meshgw.yaml"]
      }

      env {
        CONSUL_HTTP_ADDR = "${attr.unique.network.ip-address}:8500"
        VAULT_ADDR       = var.vault_addr
      }

      identity {
        name = "vault_default"
        aud  = ["vault.io"]
        ttl  = "1h"
      }

      # Nomad 1.7+ workload identity for Consul: Nomad logs in to Consul with it and hands meshgw the token as
      # secrets/consul_token and CONSUL_TOKEN, which meshgw reads (templates/consul-acl-policy.hcl.j2 renders the policy it needs).
      identity {
        name = "consul_default"
        aud  = ["consul.io"]
        ttl  = "1h"
      }

      vault {
        role        = "meshgw"
        change_mode = "restart"
      }

      template {
        destination   = "local/meshgw.yaml"
        change_mode   = "signal"
        change_signal = "SIGHUP"
        data          = <<-EOT
          datacenter: {{ env "NOMAD_DC" }}
          mode: sidecar
          service: {name: web, address: 127.0.0.1, port: 8080}
          inbound: {bind: "0.0.0.0:{{ env "NOMAD_PORT_mesh" }}"}
          upstreams:
            - {service: api, bind: "127.0.0.1:9191"}
          control_plane:
            type: consul
            consul: {register: false}
          certificates:
            type: vault
            vault:
              mount: ${var.pki_mount}
              role: ${var.pki_role}
              trust_domain: {{ env "NOMAD_META_trust_domain" }}
              auth: {method: token}
          admin: {bind: "127.0.0.1:19000"}
          drain_timeout: 5s
        EOT
      }

      shutdown_delay = "5s"

      resources {
        cpu    = 200
        memory = 128
      }
    }
  }
}
