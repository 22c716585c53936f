#!/usr/bin/env python3
"""Per-cache table of the agent's heap at its peak, from heaptrack.

  heaptrack_print -f agent.<pid>.zst --print-peaks 0 --print-allocators 0 \
      --print-temporary 0 --print-leaks 0 -F agent.fg --flamegraph-cost-type peak
  python3 heaptrack_by_cache.py agent.fg

`--flamegraph-cost-type peak` gives each call stack's bytes at the moment of
the process's peak heap; every stack is put in the first bucket whose
pattern it matches (docs/scale.md, "Where the memory goes"). The watch of a
kind is told apart by the generic watch loop instance (`cluster::watch_loop`)
whose stacks name that kind (PodEndpoints: the compact cache's writer,
`k8s::endpointcache`); the PodEndpoint cache is also split into its label
maps, its entries and its map. How to run the agent under heaptrack from
bench_scale (built with `--features system-allocator`: heaptrack sees only
glibc's malloc, and the agent links mimalloc otherwise): docs/scale.md.
"""
import collections
import re
import sys

WATCH = re.compile(r'cluster..watch_loop[^;]*?(h[0-9a-f]{16})')
KINDS = [('PodEndpoint', r'endpointcache|podendpoint..PodEndpoint'),
         ('Node', r'v1..node..Node\$u20'),
         ('NetworkPolicy', r'network_policy..NetworkPolicy')]
RULES = [
    ('nft listing for rule counters (metrics scrape, transient)', r'rule_counters|list_named_table'),
    ('PolicySync: its own copy of every PodInfo', r'PodInfo\$u20\$as\$u20\$core..clone'),
    ('policy engine: PodInfo of each pod (ClusterState)', r'to_pod_info|podendpoint..pod_info|PodInfo::from_k8s|PodKey::new|ContainerPort::named|Engine::upsert_pod'),
    ('policy engine: pods by address (by_ip)', r'pod_changed'),
    ('policy engine: ruleset / nft render', r'policy..nft|policy..ruleset|Engine::commit|Engine::settle|NftSession|FastSink|policy..batch'),
    ('policy engine: policies compiled', r'policy..compile|Engine::upsert_policy|policy..plan'),
    ('PolicySync bookkeeping (converted map)', r'PolicySync::update|policy..pods'),
    ('policy engine: policies, selectors, other', r'policy..'),
    ('IPAM view (k8s/ipam/view.rs)', r'k8s..ipam..view'),
    ('IPAM allocator (ipam crate: block cache + its watch)', r'ipam..alloc|Allocator'),
    ('leak GC (k8s/ipam/gc.rs)', r'k8s..ipam..gc'),
]


def main(path):
    lines = []
    with open(path) as f:
        for line in f:
            stack, _, cost = line.rstrip().rpartition(' ')
            lines.append((stack, int(cost)))
    kinds = {}
    for stack, _ in lines:
        m = WATCH.search(stack)
        if m:
            for name, pat in KINDS:
                if re.search(pat, stack):
                    kinds.setdefault(m.group(1), name)
    buckets = collections.Counter()
    parts = collections.Counter()
    total = 0
    for stack, cost in lines:
        total += cost
        m = WATCH.search(stack)
        if m:
            kind = kinds.get(m.group(1), 'other')
            buckets[kind + ' cache (watch + decoding)'] += cost
            if kind == 'PodEndpoint':
                parts[part(stack)] += cost
            continue
        for name, pat in RULES:
            if re.search(pat, stack):
                buckets[name] += cost
                break
        else:
            buckets['other (runtime, HTTP buffers, ...)'] += cost
    print(f'peak heap {total / 1e6:.1f} MB')
    for k, v in buckets.most_common():
        print(f'{v / 1e6:8.1f} MB  {k}')
    print('PodEndpoint cache by part:')
    for k, v in parts.most_common():
        print(f'{v / 1e6:8.1f} MB    {k}')


def part(stack):
    """What of the PodEndpoint cache a stack allocated."""
    if 'EndpointCacheWriter::convert' in stack or 'endpointcache..intern' in stack:
        return 'entries (CachedEndpoint: name, resourceVersion, addresses, ports)'
    if 'apply_watcher_event' in stack:
        return 'the map (namespace, name) -> entry'
    if 'btree' in stack:
        return 'label maps (decoded; shared with policy)'
    return 'decoding, other'


if __name__ == '__main__':
    main(sys.argv[1])
