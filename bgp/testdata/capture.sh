#!/usr/bin/env bash
# Capture real BGP messages from BIRD 2, FRR 8.4 and GoBGP 3.10 for the codec's
# round-trip vectors. Runs the three daemons in a network namespace made for
# the purpose (mgt<pid>cap, addresses 198.18.0.1-3 and 2001:db8:ff::1-3 on lo),
# lets them exchange IPv4/IPv6 routes, withdraw some, refresh and shut down one
# session, and writes the tcpdump capture to $1 (default /tmp/bgp-vectors.pcap).
# Then: python3 bgp/testdata/extract.py FILE.pcap > messages.txt
# Needs root. Everything is torn down on exit.
set -euo pipefail
out=${1:-/tmp/bgp-vectors.pcap}
ns=mgt$$cap
dir=$(mktemp -d /tmp/mgt$$cap.XXXX)
chmod 755 "$dir"
cleanup() {
  set +e
  for p in "$dir"/*.pid; do [[ -f $p ]] && kill "$(cat "$p")" 2>/dev/null; done
  [[ -n ${gobgp_pid:-} ]] && kill "$gobgp_pid" 2>/dev/null
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

cat >"$dir/bird.conf" <<CONF
router id 198.18.0.1;
protocol device {}
protocol static s4 { ipv4; route 198.19.1.0/24 blackhole; route 198.19.2.0/24 blackhole; route 198.19.3.128/25 blackhole; }
protocol static s6 { ipv6; route 2001:db8:1::/48 blackhole; route 2001:db8:1:2::/64 blackhole; }
filter tagged {
  bgp_community.add((65001,100)); bgp_large_community.add((65001,1,2)); bgp_med = 50; accept;
}
protocol bgp frr {
  local 198.18.0.1 as 65001; neighbor 198.18.0.2 as 65002; multihop; strict bind on;
  enable as4 off;
  ipv4 { import all; export filter tagged; };
  ipv6 { import all; export filter tagged; next hop address 2001:db8:ff::1; };
}
protocol bgp gobgp {
  local 198.18.0.1 as 65001; neighbor 198.18.0.3 as 65001; strict bind on;
  graceful restart on;
  ipv4 { import all; export all; next hop self; add paths on; };
  ipv6 { import all; export all; next hop address 2001:db8:ff::1; };
}
CONF
in_ns bird -c "$dir/bird.conf" -s "$dir/bird.ctl" -P "$dir/bird.pid"

mkdir -p "$dir/frr"; chown frr:frr "$dir/frr"
cat >"$dir/frr/bgpd.conf" <<CONF
frr defaults traditional
hostname frr
router bgp 65002
 bgp router-id 198.18.0.2
 no bgp ebgp-requires-policy
 no bgp network import-check
 bgp graceful-restart
 neighbor 198.18.0.1 remote-as 65001
 neighbor 198.18.0.1 update-source 198.18.0.2
 neighbor 198.18.0.1 disable-connected-check
 neighbor 198.18.0.3 remote-as 65001
 neighbor 198.18.0.3 update-source 198.18.0.2
 neighbor 198.18.0.3 disable-connected-check
 address-family ipv4 unicast
  network 198.19.20.0/24
  network 198.19.21.0/24 route-map PREP
  aggregate-address 198.19.22.0/23 summary-only
  network 198.19.22.0/24
 exit-address-family
 address-family ipv6 unicast
  network 2001:db8:20::/48
  neighbor 198.18.0.1 activate
  neighbor 198.18.0.1 route-map NH6 out
  neighbor 198.18.0.3 activate
  neighbor 198.18.0.3 route-map NH6 out
 exit-address-family
route-map PREP permit 10
 set as-path prepend 4200000099
 set community 65002:7 additive
 set large-community 65002:1:1
route-map NH6 permit 10
 set ipv6 next-hop global 2001:db8:ff::2
CONF
chown frr:frr "$dir/frr/bgpd.conf"
in_ns /usr/lib/frr/zebra -d -u frr -g frr -i "$dir/frr/zebra.pid" -z "$dir/frr/zserv" --vty_socket "$dir/frr" -f /dev/null
sleep 1
in_ns /usr/lib/frr/bgpd -d -u frr -g frr -i "$dir/frr/bgpd.pid" -z "$dir/frr/zserv" --vty_socket "$dir/frr" -l 198.18.0.2 -l 2001:db8:ff::2 -f "$dir/frr/bgpd.conf"
cp "$dir/frr/zebra.pid" "$dir/zebra.pid"; cp "$dir/frr/bgpd.pid" "$dir/bgpd.pid"

cat >"$dir/gobgp.toml" <<CONF
[global.config]
  as = 65001
  router-id = "198.18.0.3"
  local-address-list = ["198.18.0.3"]
[[neighbors]]
  [neighbors.config]
    neighbor-address = "198.18.0.1"
    peer-as = 65001
  [neighbors.transport.config]
    local-address = "198.18.0.3"
  [neighbors.graceful-restart.config]
    enabled = true
    restart-time = 90
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
    [neighbors.afi-safis.add-paths.config]
      receive = true
      send-max = 4
    [neighbors.afi-safis.mp-graceful-restart.config]
      enabled = true
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-unicast"
[[neighbors]]
  [neighbors.config]
    neighbor-address = "198.18.0.2"
    peer-as = 65002
  [neighbors.transport.config]
    local-address = "198.18.0.3"
  [neighbors.ebgp-multihop.config]
    enabled = true
    multihop-ttl = 2
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-unicast"
CONF
in_ns gobgpd -f "$dir/gobgp.toml" --api-hosts 127.0.0.1:50051 --pprof-disable >"$dir/gobgpd.log" 2>&1 &
gobgp_pid=$!
gob() { for _ in $(seq 20); do in_ns gobgp -u 127.0.0.1 -p 50051 "$@" 2>/dev/null && return 0; sleep 1; done; cat "$dir/gobgpd.log"; return 1; }
gob global rib add 198.19.30.0/24 nexthop 198.18.0.3 community 65001:30 med 10 local-pref 200 origin egp
gob global rib add 198.19.31.0/24 nexthop 198.18.0.3 large-community 65001:3:4 aggregator 65001:198.18.0.3
gob global rib -a ipv6 add 2001:db8:30::/48 nexthop 2001:db8:ff::3 community 65001:31

sleep 15
in_ns birdc -s "$dir/bird.ctl" show protocols
gob neighbor
# Withdrawals, a route refresh and a NOTIFICATION.
gob global rib del 198.19.31.0/24
gob global rib -a ipv6 del 2001:db8:30::/48
in_ns birdc -s "$dir/bird.ctl" reload in gobgp
in_ns vtysh --vty_socket "$dir/frr" -c 'clear bgp 198.18.0.1 soft in' || true
sleep 3
in_ns birdc -s "$dir/bird.ctl" disable frr
sleep 3
