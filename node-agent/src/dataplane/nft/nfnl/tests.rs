//! Unit tests of the nfnetlink encoding and the sink's batch kinds.

use serde_json::{Value, json};

use super::encode::*;

fn decls() -> Declarations {
    let mut d = Declarations::default();
    d.observe(&json!({"nftables": [
        {"add": {"table": {"family": "inet", "name": "t"}}},
        {"add": {"set": {"family": "inet", "table": "t", "name": "a4", "type": "ipv4_addr"}}},
        {"add": {"set": {"family": "inet", "table": "t", "name": "sp", "type": ["ifname", "ipv4_addr"]}}},
        {"add": {"set": {"family": "inet", "table": "t", "name": "iv", "type": "ipv4_addr", "flags": ["interval"]}}},
        {"add": {"set": {"family": "inet", "table": "t", "name": "pp", "type": ["ipv6_addr", "inet_proto", "inet_service"]}}},
        {"add": {"map": {"family": "inet", "table": "t", "name": "vm", "type": "ifname", "map": "verdict"}}},
        {"add": {"map": {"family": "inet", "table": "t", "name": "dm", "type": "ifname", "map": "ipv4_addr"}}},
    ]}));
    d
}

fn batch(items: Value) -> Value {
    json!({ "nftables": items })
}

#[test]
fn declarations_follow_the_batches() {
    let mut d = decls();
    assert_eq!(d.len(), 6);
    assert!(matches!(d.get("inet", "t", "iv"), Some(Decl::Other)));
    assert!(matches!(d.get("inet", "t", "dm"), Some(Decl::Other)));
    assert_eq!(
        d.get("inet", "t", "sp"),
        Some(&Decl::Plain {
            key: vec![Field::Ifname, Field::Ipv4],
            verdict: false
        })
    );
    d.observe(&batch(
        json!([{"delete": {"set": {"family": "inet", "table": "t", "name": "a4"}}}]),
    ));
    assert!(d.get("inet", "t", "a4").is_none());
    d.observe(&batch(
        json!([{"delete": {"table": {"family": "inet", "name": "t"}}}]),
    ));
    assert!(d.is_empty());
    let mut d = decls();
    d.observe(&batch(json!([{"flush": {"ruleset": null}}])));
    assert!(d.is_empty());
}

#[test]
fn only_element_batches_of_plain_sets_are_encoded() {
    let d = decls();
    let el = |verb: &str, set: &str, elem: Value| json!({verb: {"element": {"family": "inet", "table": "t", "name": set, "elem": elem}}});
    let ok = batch(json!([
        el("add", "a4", json!(["198.19.0.1", "198.19.0.2"])),
        el(
            "add",
            "sp",
            json!([{"concat": ["cali0123456789a", "198.19.0.1"]}])
        ),
        el(
            "add",
            "vm",
            json!([["cali0123456789a", {"jump": {"target": "pi_x"}}]])
        ),
        el("delete", "vm", json!(["cali0123456789a"])),
        el(
            "add",
            "pp",
            json!([{"concat": ["2001:db8::1", "tcp", 443]}])
        ),
    ]));
    let e = encode(&ok, &d, 7).expect("encodable");
    assert_eq!((e.first_seq, e.messages), (7, 5));
    for bad in [
        el("add", "iv", json!(["198.19.0.0"])),
        el("add", "dm", json!([["cali0123456789a", "198.19.0.1"]])),
        el("add", "nope", json!(["198.19.0.1"])),
        el("add", "a4", json!(["2001:db8::1"])),
        el(
            "add",
            "a4",
            json!([{"prefix": {"addr": "198.19.0.0", "len": 24}}]),
        ),
        el(
            "add",
            "sp",
            json!([{"concat": ["cali0123456789abcdef", "198.19.0.1"]}]),
        ),
        el("add", "vm", json!(["cali0123456789a"])),
        el("add", "a4", json!([])),
        json!({"add": {"chain": {"family": "inet", "table": "t", "name": "c"}}}),
    ] {
        assert!(
            encode(&batch(json!([bad.clone()])), &d, 1).is_none(),
            "{bad}"
        );
    }
}

#[test]
fn keys_use_nfts_register_layout() {
    let k = encode_key(
        &[Field::Ifname, Field::Ipv4],
        &json!({"concat": ["cali1", "198.19.0.1"]}),
    )
    .expect("key");
    assert_eq!(k.len(), 20);
    assert_eq!(&k[..5], b"cali1");
    assert!(k[5..16].iter().all(|b| *b == 0));
    assert_eq!(&k[16..], &[198, 19, 0, 1]);
    let k = encode_key(
        &[Field::Ipv4, Field::InetProto, Field::InetService],
        &json!({"concat": ["198.19.0.1", "udp", 53]}),
    )
    .expect("key");
    assert_eq!(k, [198, 19, 0, 1, 17, 0, 0, 0, 0, 53, 0, 0]);
    assert_eq!(
        encode_key(&[Field::InetService], &json!(8080)).expect("key"),
        8080u16.to_be_bytes()
    );
}
