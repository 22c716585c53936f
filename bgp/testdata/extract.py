#!/usr/bin/env python3
"""Split a tcpdump capture (pcap, Ethernet or Linux cooked on lo) into BGP
messages: one line per message, `SRC_IP DST_IP TYPE HEX`, in stream order."""
import struct
import sys


def packets(path):
    with open(path, 'rb') as f:
        head = f.read(24)
        magic = struct.unpack('<I', head[:4])[0]
        endian = '<' if magic in (0xa1b2c3d4, 0xa1b23c4d) else '>'
        linktype = struct.unpack(endian + 'I', head[20:24])[0]
        while True:
            rec = f.read(16)
            if len(rec) < 16:
                return
            _, _, incl, _ = struct.unpack(endian + 'IIII', rec)
            yield linktype, f.read(incl)


def tcp_segments(path):
    for linktype, frame in packets(path):
        off = 14 if linktype == 1 else 16 if linktype == 113 else 0
        ethertype = struct.unpack('>H', frame[off - 2:off])[0]
        ip = frame[off:]
        if ethertype == 0x0800:
            ihl = (ip[0] & 15) * 4
            total = struct.unpack('>H', ip[2:4])[0]
            src = '.'.join(map(str, ip[12:16]))
            dst = '.'.join(map(str, ip[16:20]))
            if ip[9] != 6:
                continue
            tcp = ip[ihl:total]
        elif ethertype == 0x86dd:
            import ipaddress
            plen = struct.unpack('>H', ip[4:6])[0]
            src = str(ipaddress.IPv6Address(ip[8:24]))
            dst = str(ipaddress.IPv6Address(ip[24:40]))
            if ip[6] != 6:
                continue
            tcp = ip[40:40 + plen]
        else:
            continue
        if len(tcp) < 20:
            continue
        sport, dport, seq = struct.unpack('>HHI', tcp[:8])
        doff = (tcp[12] >> 4) * 4
        payload = tcp[doff:]
        if payload:
            yield (src, sport, dst, dport), seq, payload


def main():
    streams = {}
    order = []
    for key, seq, payload in tcp_segments(sys.argv[1]):
        if key not in streams:
            streams[key] = {}
            order.append(key)
        streams[key][seq] = payload
    names = {1: 'OPEN', 2: 'UPDATE', 3: 'NOTIFICATION', 4: 'KEEPALIVE', 5: 'ROUTE-REFRESH'}
    for key in order:
        data = b''
        nxt = None
        for seq in sorted(streams[key]):
            p = streams[key][seq]
            if nxt is not None and seq < nxt:
                p = p[nxt - seq:]
            data += p
            nxt = seq + len(streams[key][seq])
        while len(data) >= 19:
            ln = struct.unpack('>H', data[16:18])[0]
            if ln < 19 or len(data) < ln:
                break
            msg, data = data[:ln], data[ln:]
            print(key[0], key[2], names.get(msg[18], str(msg[18])), msg.hex())


main()
