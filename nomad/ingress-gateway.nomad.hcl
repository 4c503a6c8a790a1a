# A Consul ingress gateway run by meshgw: plain TCP from outside the mesh on port 8080, to "web" over mTLS.
#
# meshgw in `mode: ingress-gateway`: each of its `listeners` takes plaintext from outside the mesh and
# calls its service over mTLS as "ingress-gateway" (allow it with an intention: ingress-gateway -> web).
# Nomad's side follows vault-nomad.md §4.1-4.3: `gateway { ingress { listener {} } }`
# registers the gateway and its config entry in Consul; the task of kind "connect-ingress:<service>" is
# meshgw instead of the Envoy task Nomad would inject. The listener ports below, the network ports and
# meshgw's listeners must agree (tests/test_packaging.py checks that they do).
#
#   nomad job run -var trust_domain=<consul trust domain> nomad/ingress-gateway.nomad.hcl

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "meshgw" {
  type    = string
  default = "/usr/local/meshgw/bin/meshgw"
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

job "ingress-gateway" {
  datacenters = var.datacenters
  type        = "service"

  meta {
    trust_domain = var.trust_domain
  }

  group "ingress" {
    count = 1

    network {
      mode = "bridge"
      port "web" {
        static = 8080
        to     = 8080
      }
    }

    service {
      name = "ingress-gateway"
      port = "8080"

      connect {
        gateway {
          proxy {
            connect_timeout = "5s"
          }
          ingress {
            listener {
              port     = 8080
              protocol = "tcp"
              service {
                name = "web"
              }
            }
          }
        }
      }
    }

    task "meshgw" {
      driver = "exec"
      kind   = "connect-ingress:ingress-gateway"

      config {
        command = var.meshgw
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
          mode: ingress-gateway
          service: {name: ingress-gateway}
          listeners:
            - {bind: "0.0.0.0:{{ env "NOMAD_PORT_web" }}", protocol: tcp, services: [web]}
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
        EOT
      }

      resources {
        cpu    = 200
        memory = 128
      }
    }
  }
}
