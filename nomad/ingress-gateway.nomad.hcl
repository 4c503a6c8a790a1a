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
      kind   = "connect-ingress:ingress-gateway"
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
