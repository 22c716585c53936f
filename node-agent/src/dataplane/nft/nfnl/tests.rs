//! Unit tests of the nfnetlink encoding and the sink's batch kinds.

use serde_json::{Value, json};

use super::decls::*;
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

/// The engine's typed items are read as they are, and mean exactly what
/// their JSON rendering means: same declarations, same bytes.
#[test]
fn typed_items_encode_like_their_json() {
    use std::borrow::Cow;

    use policy::Batch;
    use policy::batch::Item;
    use policy::nftables::expr::{Expression, NamedExpression, Verdict};
    use policy::nftables::schema::{
        Element, NfListObject, Set, SetFlag, SetType, SetTypeValue, Table,
    };
    use policy::nftables::stmt::JumpTarget;
    use policy::nftables::types::NfFamily;

    let set = |name: &str, ty: SetTypeValue<'static>, interval: bool| {
        NfListObject::Set(Box::new(Set {
            family: NfFamily::INet,
            table: "t".into(),
            name: name.to_string().into(),
            set_type: ty,
            flags: interval.then(|| [SetFlag::Interval].into()),
            ..Set::default()
        }))
    };
    let mut decl = Batch::new();
    decl.add(NfListObject::Table(Table {
        family: NfFamily::INet,
        name: "t".into(),
        handle: None,
    }));
    decl.add(set("a4", SetTypeValue::Single(SetType::Ipv4Addr), false));
    decl.add(set("iv", SetTypeValue::Single(SetType::Ipv4Addr), true));
    decl.add(set(
        "pp",
        SetTypeValue::Concatenated(Cow::Owned(vec![
            SetType::Ipv6Addr,
            SetType::InetProto,
            SetType::InetService,
        ])),
        false,
    ));
    decl.raw(json!({"add": {"map": {"family": "inet", "table": "t", "name": "vm", "type": "ifname", "map": "verdict"}}}));
    let (mut typed, mut by_json) = (Declarations::default(), Declarations::default());
    for item in &decl.items {
        typed.observe_item(item);
    }
    by_json.observe(&serde_json::to_value(&decl).expect("json"));
    assert_eq!(typed.len(), 4);
    for name in ["a4", "iv", "pp", "vm"] {
        assert_eq!(
            typed.get("inet", "t", name),
            by_json.get("inet", "t", name),
            "{name}"
        );
    }
    assert!(matches!(typed.get("inet", "t", "iv"), Some(Decl::Other)));

    let s = |v: &str| Expression::String(v.to_string().into());
    let el = |name: &str, elem: Vec<Expression<'static>>| {
        NfListObject::Element(Element {
            family: NfFamily::INet,
            table: "t".into(),
            name: name.to_string().into(),
            elem: Cow::Owned(elem),
        })
    };
    let mut b = Batch::new();
    b.add(el("a4", vec![s("198.19.0.1"), s("198.19.0.2")]));
    b.add(el(
        "pp",
        vec![Expression::Named(NamedExpression::Concat(vec![
            s("2001:db8::1"),
            s("tcp"),
            Expression::Number(443),
        ]))],
    ));
    b.add(el(
        "vm",
        vec![Expression::List(vec![
            s("cali0123456789a"),
            Expression::Verdict(Verdict::Jump(JumpTarget {
                target: "pi_x".into(),
            })),
        ])],
    ));
    b.delete(el("vm", vec![s("calib")]));
    let native = encode_items(&b.items, &typed, 3).expect("typed items encodable");
    let via_json =
        encode(&serde_json::to_value(&b).expect("json"), &by_json, 3).expect("json encodable");
    assert_eq!((native.first_seq, native.messages), (3, 4));
    assert_eq!(native.bytes, via_json.bytes);
    // An interval set is nft's business; a raw element item is encoded.
    let mut iv = Batch::new();
    iv.add(el("iv", vec![s("198.19.0.1")]));
    assert!(encode_items(&iv.items, &typed, 1).is_none());
    let raw_only = [Item::Raw(
        json!({"add": {"element": {"family": "inet", "table": "t", "name": "a4", "elem": ["198.19.0.3"]}}}),
    )];
    assert!(encode_items(&raw_only, &typed, 1).is_some());
}
