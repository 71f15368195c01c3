#!/usr/bin/env bash
# A Mosquitto 2.0 broker for facegate: TLS, a user per terminal, the per-device ACL.
# The tests' broker (tests/broker.py) is made by this script too, so what the docs show is
# what the tests run (docs/operator.md, step 1).
#
#   scripts/broker-setup.sh init DIR [--host NAME]... [--port 8883] [--bind ADDR]
#                                    [--autosave-s 5 | --no-persistence] [--max-packet-bytes N (0: no limit)]
#                                    [--client-certs] [--run-as USER] [--prefix facegate/v1]
#       DIR/mosquitto.conf   TLS listener, no anonymous login, persistence, packet limits
#       DIR/ca.pem, ca.key   a CA of its own (ca.pem goes to every terminal's mqtt.ca_file)
#       DIR/server.pem, .key the broker's certificate for every --host (default: this host's
#                            name, localhost, 127.0.0.1)
#       DIR/passwd, DIR/acl  the password file (mosquitto_passwd) and the ACL; user "backend"
#       DIR/users/NAME.password   each user's password (first line), mode 0600
#   scripts/broker-setup.sh add-user DIR NAME... [--role terminal|backend|reader]
#       a terminal's user name is its device_id: its ACL block confines it to its own topics;
#       a backend reads every terminal and answers only under PREFIX/replies/NAME/; a reader only reads. The password is DIR/users/NAME.password if that exists, else a new random one
#       written there. Reload a running broker afterwards (SIGHUP: systemctl reload mosquitto).
#   scripts/broker-setup.sh client-cert DIR NAME
#       DIR/clients/NAME.pem and .key, signed by the CA (for a broker made with --client-certs)
#
# Run the broker: mosquitto -c DIR/mosquitto.conf
set -euo pipefail

die() { printf 'broker-setup: %s\n' "$*" >&2; exit 2; }

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

is_ip() { [[ $1 =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ || $1 == *:* ]]; }

# Files the broker reads stay readable by it: as root, Mosquitto drops to its own user.
share_with_broker() {
  local group=""
  if [ "$(id -u)" -eq 0 ] && getent group mosquitto >/dev/null && [ -z "${RUN_AS:-}" ]; then
    group=mosquitto
  fi
  for f in "$@"; do
    if [ -n "$group" ]; then chgrp "$group" "$f"; chmod 0640 "$f"; else chmod 0600 "$f"; fi
  done
}

new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; chmod 0600 "$1"; }

# sign SUBJECT_CN KEY OUT EXTFILE_CONTENT
sign() {
  local csr ext
  csr=$(mktemp) ext=$(mktemp)
  printf '%s\n' "$4" > "$ext"
  openssl req -new -key "$2" -subj "/CN=$1" -out "$csr" 2>/dev/null
  openssl x509 -req -in "$csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
    -days 825 -sha256 -extfile "$ext" -out "$3" 2>/dev/null
  rm -f "$csr" "$ext"
}

cmd_init() {
  local hosts=() port=8883 bind="" autosave=5 persistence=true max_packet=2200000 client_certs=false prefix=facegate/v1
  RUN_AS=""
  while (($#)); do
    case $1 in
      --host) hosts+=("$2"); shift 2 ;;
      --port) port=$2; shift 2 ;;
      --bind) bind=$2; shift 2 ;;
      --autosave-s) autosave=$2; shift 2 ;;
      --no-persistence) persistence=false; shift ;;
      --max-packet-bytes) max_packet=$2; shift 2 ;;
      --client-certs) client_certs=true; shift ;;
      --run-as) RUN_AS=$2; shift 2 ;;
      --prefix) prefix=${2%/}; shift 2 ;;
      *) die "init: unknown option $1" ;;
    esac
  done
  [[ $port =~ ^[0-9]+$ ]] || die "--port wants a number, got '$port'"
  [[ $max_packet =~ ^[0-9]+$ ]] || die "--max-packet-bytes wants a number, got '$max_packet'"
  [ -e "$DIR/mosquitto.conf" ] && die "$DIR/mosquitto.conf exists: this broker is set up (add users with 'add-user')"
  ((${#hosts[@]})) || hosts=("$(hostname)" localhost 127.0.0.1)
  mkdir -p "$DIR/users" "$DIR/data"
  local san="" h
  for h in "${hosts[@]}"; do
    if is_ip "$h"; then san+="IP:$h,"; else san+="DNS:$h,"; fi
  done
  new_key "$DIR/ca.key"
  openssl req -x509 -new -key "$DIR/ca.key" -subj "/CN=facegate broker CA ($(hostname))" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$DIR/ca.pem" 2>/dev/null
  new_key "$DIR/server.key"
  sign "${hosts[0]}" "$DIR/server.key" "$DIR/server.pem" \
    "subjectAltName=${san%,}
basicConstraints=critical,CA:FALSE
extendedKeyUsage=serverAuth"
  : > "$DIR/passwd"
  cat > "$DIR/acl" <<EOF
# facegate ACL (scripts/broker-setup.sh); prefix: $prefix
# One block per user, no 'pattern' lines: Mosquitto applies patterns to every user, so a
# pattern for the terminals (%u) let a reader named "dashboard" publish as a device of that name.
# terminal (user = its device_id): writes only its own topics, its Home Assistant discovery
#   and answers under $prefix/replies/; reads only its own command topic and Home Assistant's status.
# backend: reads every terminal's topics, commands every terminal, and reads and writes only its
#   own reply prefix $prefix/replies/USER/ (its response topics) and $prefix/_probe/ (workers' probes).
# reader: reads the terminals' topics; publishes nothing.
EOF
  local dir_abs
  dir_abs=$(cd "$DIR" && pwd)
  {
    echo "# facegate broker (scripts/broker-setup.sh); run: mosquitto -c $dir_abs/mosquitto.conf"
    echo "listener $port${bind:+ $bind}"
    echo "cafile $dir_abs/ca.pem"
    echo "certfile $dir_abs/server.pem"
    echo "keyfile $dir_abs/server.key"
    if $client_certs; then echo "require_certificate true"; fi
    echo "allow_anonymous false"
    echo "password_file $dir_abs/passwd"
    echo "acl_file $dir_abs/acl"
    if $persistence; then
      echo "# sessions and queued results survive a restart; a crash loses what came since the last save:"
      echo "# set the terminals' mqtt.redeliver_s to at least autosave_interval"
      echo "persistence true"
      echo "persistence_location $dir_abs/data/"
      echo "autosave_interval $autosave"
    else
      echo "persistence false"
    fi
    echo "# the largest packet a client may send: a verify command of max_command_bytes (2,000,000) and its headers"
    if [ "$max_packet" -gt 0 ]; then echo "max_packet_size $max_packet"; fi
    echo "max_inflight_messages 20"
    echo "# results queued for a stopped backend worker (beyond it Mosquitto drops them)"
    echo "max_queued_messages 100000"
    echo "log_dest stderr"
    echo "log_type error"
    echo "log_type warning"
    echo "log_type notice"
    echo "connection_messages true"
    if [ -n "$RUN_AS" ]; then echo "user $RUN_AS"; fi
  } > "$DIR/mosquitto.conf"
  share_with_broker "$DIR/server.key" "$DIR/passwd" "$DIR/acl"
  chmod 0644 "$DIR/ca.pem" "$DIR/server.pem" "$DIR/mosquitto.conf"
  if [ "$(id -u)" -eq 0 ] && [ -z "$RUN_AS" ] && getent passwd mosquitto >/dev/null; then
    chown mosquitto "$DIR/data"
  fi
  add_users backend "$prefix" backend
  echo "broker in $dir_abs: listener $port (TLS, certificate for ${hosts[*]}), user backend"
  echo "start it: mosquitto -c $dir_abs/mosquitto.conf"
}

# add_users ROLE PREFIX NAME...
add_users() {
  local role=$1 prefix=$2 name pw
  shift 2
  for name in "$@"; do
    [[ $name =~ ^[A-Za-z0-9_.-]{1,64}$ ]] || die "user '$name': use letters, digits, '_', '.', '-' (a terminal's is its device_id)"
    pw="$DIR/users/$name.password"
    if [ ! -s "$pw" ]; then
      (umask 077; openssl rand -hex 16 > "$pw")
    fi
    mosquitto_passwd -b "$DIR/passwd" "$name" "$(head -n1 "$pw")"
    if ! grep -qx "user $name" "$DIR/acl"; then
      {
        echo ""
        echo "user $name"
        case $role in
          terminal)
            for t in status attest state health event guide result; do echo "topic write $prefix/$name/$t"; done
            echo "topic read $prefix/$name/cmd/verify"
            echo "topic write homeassistant/+/facegate_$name/+/config"
            echo "topic write $prefix/replies/#"
            echo "topic read homeassistant/status" ;;
          backend)
            for t in status attest state health event guide result; do echo "topic read $prefix/+/$t"; done
            echo "topic write $prefix/+/cmd/verify"
            echo "topic readwrite $prefix/replies/$name/#"
            echo "topic readwrite $prefix/_probe/#"
            echo "topic readwrite homeassistant/#" ;;
          reader)
            for t in status attest state health event guide result; do echo "topic read $prefix/+/$t"; done ;;
        esac
      } >> "$DIR/acl"
    fi
    echo "user $name ($role): password in $DIR/users/$name.password"
  done
}

cmd_add_user() {
  local role=terminal names=() prefix
  while (($#)); do
    case $1 in
      --role) role=$2; shift 2 ;;
      -*) die "add-user: unknown option $1" ;;
      *) names+=("$1"); shift ;;
    esac
  done
  case $role in terminal|backend|reader) ;; *) die "--role is terminal, backend or reader, not '$role'" ;; esac
  ((${#names[@]})) || die "add-user: which user? (a terminal's user name is its device_id)"
  [ -f "$DIR/acl" ] || die "$DIR is not a broker made by 'broker-setup.sh init'"
  prefix=$(sed -n -e 's|^# facegate ACL .*; prefix: \(.*\)$|\1|p' -e 's|^pattern write \(.*\)/%u/status$|\1|p' "$DIR/acl" | head -n1)
  add_users "$role" "${prefix:-facegate/v1}" "${names[@]}"
  echo "reload a running broker to take them: kill -HUP \$(pidof mosquitto)  (or: systemctl reload mosquitto)"
}

cmd_client_cert() {
  local name=${1:?client-cert: which name?}
  [ -f "$DIR/ca.key" ] || die "$DIR/ca.key missing: not a broker made by 'broker-setup.sh init'"
  mkdir -p "$DIR/clients"
  new_key "$DIR/clients/$name.key"
  sign "$name" "$DIR/clients/$name.key" "$DIR/clients/$name.pem" "extendedKeyUsage=clientAuth"
  echo "client certificate $DIR/clients/$name.pem (key $DIR/clients/$name.key)"
}

(($# >= 2)) || usage
cmd=$1 DIR=$2
shift 2
command -v openssl >/dev/null || die "openssl is missing (apt-get install openssl)"
command -v mosquitto_passwd >/dev/null || die "mosquitto_passwd is missing (apt-get install mosquitto)"
case $cmd in
  init) mkdir -p "$DIR"; cmd_init "$@" ;;
  add-user) cmd_add_user "$@" ;;
  client-cert) cmd_client_cert "$@" ;;
  *) usage ;;
esac
