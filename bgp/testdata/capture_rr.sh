#!/usr/bin/env bash
# Capture an UPDATE reflected by a route reflector (RFC 4456: ORIGINATOR_ID and
# CLUSTER_LIST) for the codec's round-trip vectors: BIRD 2 as route reflector
# (198.18.0.1, cluster id 198.18.0.100), FRR 8.4 as a client originating
# 198.19.40.0/24 and 2001:db8:40::/48 (198.18.0.2), a second BIRD as the
# client that receives them (198.18.0.3), all iBGP AS 64512 in a network
# namespace made for the purpose (mgt<pid>rr, addresses on lo). Writes the
# tcpdump capture to $1 (default /tmp/bgp-rr.pcap); then
# python3 bgp/testdata/extract.py FILE.pcap. Needs root; torn down on exit.
set -euo pipefail
out=${1:-/tmp/bgp-rr.pcap}
ns=mgt$$rr
dir=$(mktemp -d /tmp/mgt$$rr.XXXX)
chmod 755 "$dir"
cleanup() {
  set +e
  for p in "$dir"/*.pid "$dir"/frr/*.pid; do [[ -f $p ]] && kill "$(cat "$p")" 2>/dev/null; done
  [[ -n ${dump_pid:-} ]] && kill "$dump_pid" 2>/dev/null
  sleep 1
  ip netns del "$ns" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
in_ns() { ip netns exec "$ns" "$@"; }

ip netns add "$ns"
in_ns ip link set lo up
for i in 1 2 3; do
  in_ns ip addr add 198.18.0.$i/32 dev lo
  in_ns ip addr add 2001:db8:ff::$i/128 dev lo
done
in_ns tcpdump -U -i lo -s 0 -w "$out" 'tcp port 179' >/dev/null 2>&1 &
dump_pid=$!
sleep 1

cat >"$dir/rr.conf" <<CONF
router id 198.18.0.1;
protocol device {}
template bgp rrclient {
  local as 64512; rr client; rr cluster id 198.18.0.100; strict bind on;
  ipv4 { import all; export all; };
  ipv6 { import all; export all; };
}
protocol bgp frr from rrclient { source address 198.18.0.1; neighbor 198.18.0.2 as 64512; }
protocol bgp bird2 from rrclient { source address 198.18.0.1; neighbor 198.18.0.3 as 64512; }
CONF
cat >"$dir/cl.conf" <<CONF
router id 198.18.0.3;
protocol device {}
protocol bgp reflector {
  local 198.18.0.3 as 64512; neighbor 198.18.0.1 as 64512; strict bind on;
  ipv4 { import all; export none; };
  ipv6 { import all; export none; };
}
CONF
in_ns bird -c "$dir/rr.conf" -s "$dir/rr.ctl" -P "$dir/rr.pid"
in_ns bird -c "$dir/cl.conf" -s "$dir/cl.ctl" -P "$dir/cl.pid"

mkdir -p "$dir/frr"; chown frr:frr "$dir/frr"
cat >"$dir/frr/bgpd.conf" <<CONF
frr defaults traditional
hostname frr
router bgp 64512
 bgp router-id 198.18.0.2
 no bgp network import-check
 neighbor 198.18.0.1 remote-as 64512
 neighbor 198.18.0.1 update-source 198.18.0.2
 address-family ipv4 unicast
  network 198.19.40.0/24
 exit-address-family
 address-family ipv6 unicast
  network 2001:db8:40::/48
  neighbor 198.18.0.1 activate
  neighbor 198.18.0.1 route-map NH6 out
 exit-address-family
route-map NH6 permit 10
 set ipv6 next-hop global 2001:db8:ff::2
CONF
chown frr:frr "$dir/frr/bgpd.conf"
in_ns /usr/lib/frr/zebra -d -u frr -g frr -i "$dir/frr/zebra.pid" -z "$dir/frr/zserv" --vty_socket "$dir/frr" -f /dev/null
sleep 1
in_ns /usr/lib/frr/bgpd -d -u frr -g frr -i "$dir/frr/bgpd.pid" -z "$dir/frr/zserv" --vty_socket "$dir/frr" -l 198.18.0.2 -f "$dir/frr/bgpd.conf"

sleep 12
in_ns birdc -s "$dir/rr.ctl" show protocols
in_ns birdc -s "$dir/cl.ctl" show route all
