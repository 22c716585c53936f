//! The API test server authenticates and authorizes as the real one does:
//! tokens (the admin's, ServiceAccount tokens from the TokenRequest API),
//! 401 without, RBAC from the stored roles and bindings with 403s in the
//! real server's words, and the agent's identity from `deploy/margay.yaml`
//! as shipped: what the agent does is allowed, what it must not do is not.

mod apiserver_support;

use apiserver_support::*;
use integration_tests::apiserver::{ApiServer, Config};
use integration_tests::k8s;
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

async fn as_user(server: &ApiServer, token: &str) -> kube::Client {
    kube::Client::try_from(server.client_config(token)).expect("client")
}

/// The agent's ServiceAccount token, after applying the shipped RBAC.
async fn agent_token(server: &ApiServer, admin: &kube::Client) -> String {
    for o in k8s::agent_identity_objects().expect("deploy/margay.yaml") {
        k8s::apply_object(admin, &o).await.expect("identity object");
    }
    server
        .service_account_token("margay-system", "margay-node")
        .await
        .expect("token")
}

#[tokio::test]
async fn no_or_unknown_token_is_401_and_health_needs_none() {
    let server = start().await;
    let anon = as_user(&server, "").await;
    let (code, s) = raw(&anon, "GET", "/api/v1/namespaces", None, vec![]).await;
    assert_eq!(
        (code, s["reason"].as_str()),
        (401, Some("Unauthorized")),
        "{s}"
    );
    let bogus = as_user(&server, "mgsa1.eyJ4Ijoxfq.00").await;
    assert_eq!(raw(&bogus, "GET", "/api", None, vec![]).await.0, 401);
    assert_eq!(raw(&bogus, "GET", "/healthz", None, vec![]).await.0, 200);
    assert_eq!(raw(&bogus, "GET", "/version", None, vec![]).await.0, 200);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn the_agents_identity_may_do_what_the_manifest_grants_and_nothing_else() {
    let server = start().await;
    let admin = client(&server);
    let token = agent_token(&server, &admin).await;
    let agent = as_user(&server, &token).await;
    let nodes_admin: Api<Node> = Api::all(admin.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}
    }))
    .expect("node");
    nodes_admin
        .create(&PostParams::default(), &node)
        .await
        .expect("admin creates the node");

    let nodes: Api<Node> = Api::all(agent.clone());
    // Reads and the merge patch of its annotations: granted.
    let mut got = nodes.get("n1").await.expect("get node");
    nodes.list(&Default::default()).await.expect("list nodes");
    nodes
        .patch(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"margay.dev/ipv4-address": "198.18.0.11/24"}}}),
            ),
        )
        .await
        .expect("merge patch of the agent's annotations");
    // A full replace (what the agent used to do): refused, in the real
    // server's words.
    got.metadata.annotations = Some([("x".to_string(), "y".to_string())].into());
    let e = api_err(nodes.replace("n1", &PostParams::default(), &got).await);
    assert_eq!(e.code, 403, "{e:?}");
    assert_eq!(
        e.message,
        "nodes \"n1\" is forbidden: User \"system:serviceaccount:margay-system:margay-node\" cannot update resource \"nodes\" in API group \"\" at the cluster scope"
    );
    // Not granted at all: deleting nodes, the status subresource, other
    // namespaces' Secrets, ServiceAccount tokens.
    assert_eq!(
        api_err(nodes.delete("n1", &Default::default()).await).code,
        403
    );
    let (code, s) = raw(
        &agent,
        "PATCH",
        "/api/v1/nodes/n1/status",
        Some("application/merge-patch+json"),
        br#"{"status":{}}"#.to_vec(),
    )
    .await;
    assert_eq!(code, 403, "{s}");
    assert!(
        s["message"]
            .as_str()
            .unwrap_or_default()
            .contains("resource \"nodes/status\""),
        "{s}"
    );
    let (code, _) = raw(
        &agent,
        "GET",
        "/api/v1/namespaces/default/secrets/x",
        None,
        vec![],
    )
    .await;
    assert_eq!(code, 403, "secrets outside margay-system");
    let (code, _) = raw(
        &agent,
        "POST",
        "/api/v1/namespaces/margay-system/serviceaccounts/margay-node/token",
        Some("application/json"),
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(code, 403, "the agent cannot mint tokens");
    // The IPAM blocks it owns: create and delete granted.
    k8s::install_crds(&admin).await.expect("crds");
    let blocks: Api<node_agent::k8s::crd::IPAMBlock> = Api::all(agent.clone());
    blocks.list(&Default::default()).await.expect("list blocks");
    // Discovery needs only authentication.
    assert_eq!(raw(&agent, "GET", "/apis", None, vec![]).await.0, 200);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn tokens_survive_a_restart_and_die_with_their_service_account() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = || Config {
        state_file: Some(dir.path().join("state.json")),
        ..Config::default()
    };
    let server = start_with(cfg()).await;
    let admin = client(&server);
    let token = agent_token(&server, &admin).await;
    let addr = server.addr();
    server.shutdown().await.expect("shutdown");

    let mut again = cfg();
    again.listen = addr;
    let server = ApiServer::start(again).await.expect("restart");
    let agent = as_user(&server, &token).await;
    let nodes: Api<Node> = Api::all(agent.clone());
    nodes
        .list(&Default::default())
        .await
        .expect("the token still works");

    // A missing ServiceAccount has no tokens; a deleted one's stop working.
    let (code, _) = raw(
        &client(&server),
        "POST",
        "/api/v1/namespaces/margay-system/serviceaccounts/nobody/token",
        Some("application/json"),
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(code, 404);
    Api::<ServiceAccount>::namespaced(client(&server), "margay-system")
        .delete("margay-node", &Default::default())
        .await
        .expect("delete the ServiceAccount");
    assert_eq!(
        api_err(nodes.list(&Default::default()).await).code,
        401,
        "a deleted ServiceAccount's token"
    );
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn bindings_scope_names_and_groups_as_the_real_authorizer() {
    let server = start().await;
    let admin = client(&server);
    for o in [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "b"}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "bot", "namespace": "a"}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "cm-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"], "resourceNames": ["only"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "bot-reads", "namespace": "a"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cm-reader"},
            "subjects": [{"kind": "Group", "name": "system:serviceaccounts:a"}]}),
    ] {
        k8s::apply_object(&admin, &o).await.expect("object");
    }
    let token = server
        .service_account_token("a", "bot")
        .await
        .expect("token");
    let bot = as_user(&server, &token).await;
    let get = |ns: &str, name: &str| format!("/api/v1/namespaces/{ns}/configmaps/{name}");
    // Granted in namespace a, by name: the object may be missing (404), but
    // the request is authorized.
    assert_eq!(
        raw(&bot, "GET", &get("a", "only"), None, vec![]).await.0,
        404
    );
    assert_eq!(
        raw(&bot, "GET", &get("a", "other"), None, vec![]).await.0,
        403
    );
    assert_eq!(
        raw(&bot, "GET", &get("b", "only"), None, vec![]).await.0,
        403,
        "other namespace"
    );
    // A list names nothing, unless its field selector names the object.
    let list = "/api/v1/namespaces/a/configmaps";
    assert_eq!(raw(&bot, "GET", list, None, vec![]).await.0, 403);
    let one = format!("{list}?fieldSelector=metadata.name%3Donly");
    assert_eq!(raw(&bot, "GET", &one, None, vec![]).await.0, 200);
    // kubectl auth can-i's SelfSubjectAccessReview.
    let review = |verb: &str, name: &str| {
        serde_json::to_vec(&json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"namespace": "a", "verb": verb, "resource": "configmaps", "name": name}}
        }))
        .expect("json")
    };
    let path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
    let (code, s) = raw(
        &bot,
        "POST",
        path,
        Some("application/json"),
        review("get", "only"),
    )
    .await;
    assert_eq!(
        (code, s["status"]["allowed"].as_bool()),
        (201, Some(true)),
        "{s}"
    );
    let (_, s) = raw(
        &bot,
        "POST",
        path,
        Some("application/json"),
        review("delete", "only"),
    )
    .await;
    assert_eq!(s["status"]["allowed"].as_bool(), Some(false), "{s}");
    server.shutdown().await.expect("shutdown");
}

/// Each HTTP request maps to the verb the real server authorizes: a watch
/// is `watch`, not `list`; a collection DELETE is `deletecollection`.
#[tokio::test]
async fn http_requests_map_to_the_real_verbs() {
    let server = start().await;
    let admin = client(&server);
    for o in [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "lister", "namespace": "a"}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "list-delete", "namespace": "a"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "delete"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "lister", "namespace": "a"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "list-delete"},
            "subjects": [{"kind": "ServiceAccount", "name": "lister", "namespace": "a"}]}),
    ] {
        k8s::apply_object(&admin, &o).await.expect("object");
    }
    let token = server
        .service_account_token("a", "lister")
        .await
        .expect("token");
    let sa = as_user(&server, &token).await;
    let cms = "/api/v1/namespaces/a/configmaps";
    assert_eq!(raw(&sa, "GET", cms, None, vec![]).await.0, 200, "list");
    let (code, s) = raw(
        &sa,
        "GET",
        &format!("{cms}?watch=true&timeoutSeconds=1"),
        None,
        vec![],
    )
    .await;
    assert_eq!(code, 403, "a watch is not a list: {s}");
    assert!(
        s["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot watch"),
        "{s}"
    );
    assert_eq!(
        raw(&sa, "GET", &format!("{cms}/x"), None, vec![]).await.0,
        403,
        "get"
    );
    assert_eq!(
        raw(&sa, "DELETE", &format!("{cms}/x"), None, vec![])
            .await
            .0,
        404,
        "delete (allowed; absent)"
    );
    let (code, s) = raw(&sa, "DELETE", cms, None, vec![]).await;
    assert_eq!(code, 403, "a collection DELETE is deletecollection: {s}");
    assert!(
        s["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot deletecollection"),
        "{s}"
    );
    let (code, _) = raw(
        &sa,
        "POST",
        cms,
        Some("application/json"),
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}"#.to_vec(),
    )
    .await;
    assert_eq!(code, 403, "create");
    server.shutdown().await.expect("shutdown");
}

/// `/margay/traffic`: the response bytes each user received, per resource
/// and verb, exactly as sent (a list's body, a watch's events); only the
/// admin may read it.
#[tokio::test]
async fn traffic_is_counted_per_user_resource_and_verb() {
    use futures::StreamExt as _;
    use integration_tests::apiserver::traffic::user_totals;
    let server = start().await;
    let admin = client(&server);
    let token = agent_token(&server, &admin).await;
    let agent = as_user(&server, &token).await;
    let agent_user = "system:serviceaccount:margay-system:margay-node";
    let nodes_admin: Api<Node> = Api::all(admin.clone());
    for n in ["n1", "n2"] {
        let node: Node = serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}}),
        )
        .expect("node");
        nodes_admin
            .create(&PostParams::default(), &node)
            .await
            .expect("create node");
    }
    // A list: counted byte for byte.
    let req = http::Request::get("/api/v1/nodes")
        .body(Vec::new())
        .expect("request");
    let listed = bounded("list", agent.request_text(req))
        .await
        .expect("list nodes");
    // A watch: one frame per event.
    let nodes: Api<Node> = Api::all(agent.clone());
    let rv = nodes
        .list(&Default::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut stream = nodes
        .watch(&Default::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    for i in 0..3 {
        nodes_admin
            .patch(
                "n1",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"i": i.to_string()}}})),
            )
            .await
            .expect("patch");
        bounded("watch event", stream.next())
            .await
            .expect("event")
            .expect("decoded");
    }
    let (code, report) = raw(&admin, "GET", "/margay/traffic", None, vec![]).await;
    assert_eq!(code, 200, "{report}");
    let (by, total) = user_totals(&report, agent_user);
    let (list_bytes, list_frames) = by["nodes list"];
    // Two lists of the same two nodes: the raw one and the typed one.
    assert_eq!(list_bytes, 2 * listed.len() as u64, "{report}");
    assert_eq!(list_frames, 2, "{report}");
    let (watch_bytes, watch_frames) = by["nodes watch"];
    assert_eq!(watch_frames, 3, "three events, one frame each: {report}");
    assert!(
        watch_bytes > 3 * 100,
        "three Node events are more than 300 bytes: {report}"
    );
    assert!(total >= list_bytes + watch_bytes, "{report}");
    // The admin's own writes are counted for the admin, not the agent.
    let (admin_by, _) = user_totals(&report, "kubernetes-admin");
    assert!(admin_by.contains_key("nodes patch"), "{report}");
    assert!(!by.contains_key("nodes patch"), "{report}");
    // Not for the agent to read.
    assert_eq!(
        raw(&agent, "GET", "/margay/traffic", None, vec![]).await.0,
        403
    );
    server.shutdown().await.expect("shutdown");
}
