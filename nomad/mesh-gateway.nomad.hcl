# A Consul mesh gateway on every client node, run by meshgw (Nomad 1.10+ system job).
#
# meshgw in `mode: mesh-gateway` routes mTLS connections between datacenters by their SNI without
# decrypting them (consul.md §6); sidecars reach it with `mesh_gateway: {mode: local}` (or `remote`).
# It learns this datacenter's services and the other datacenters' gateways from Consul. The job itself
# follows Nomad's gateway rules (vault-nomad.md §4.1-4.3):
# - `connect { gateway { mesh {} } }` makes Nomad register the service as a Consul mesh gateway, with its
#   WAN address on the "mesh_wan" port; the task of kind "connect-mesh:<service>" replaces the Envoy task
#   Nomad would inject (and may carry template/vault/identity, which sidecar_task cannot).
# - Gateways may use host networking; a static port keeps the WAN address stable for other datacenters.
#
#   nomad job run -var trust_domain=<consul trust domain> nomad/mesh-gateway.nomad.hcl

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
  type = string
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

job "mesh-gateway" {
  datacenters = var.datacenters
  type        = "system"

  meta {
    trust_domain = var.trust_domain
  }

  constraint {
    attribute = "${attr.kernel.name}"
    value     = "linux"
  }

  group "gateway" {
    network {
      mode = "host"
      port "mesh_wan" {
        static = 8443
      }
    }

    service {
      name = "mesh-gateway"
      port = "mesh_wan"

      connect {
        gateway {
          mesh {}
        }
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
      kind   = "connect-mesh:mesh-gateway"
      # Longer than drain_timeout: SIGTERM drains open connections before meshgw exits 0.
      kill_timeout = "25s"

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
          mode: mesh-gateway
          service: {name: mesh-gateway}
          gateway:
            bind: "0.0.0.0:{{ env "NOMAD_PORT_mesh_wan" }}"
            wan_address: "{{ env "NOMAD_IP_mesh_wan" }}:{{ env "NOMAD_HOST_PORT_mesh_wan" }}"
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
          admin: {bind: "127.0.0.1:19100"}
        EOT
      }

      resources {
        cpu    = 300
        memory = 256
      }
    }
  }
}
