//! Unit tests of logic: the operator's reconcile decisions and the Lease election, driven
//! through kube's real `Client` over a mock tower service (an in-memory stand-in for the API
//! server that records every request). They prove what the code asks of an API server — not
//! that it runs in a cluster: no API server is reachable on the development machines.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ate_kube::crd::WorkerPool;
use ate_kube::kube_lease::{KubeLeaderLease, LeaseStep, decide};
use ate_kube::operator::{Ctx, Outcome, next_action, reconcile_pool};
use ate_kube::shape::OperatorConfig;
use http::{Request, Response};
use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

/// One request as the mock API server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    uri: String,
    body: Value,
}

type Handler = Box<dyn FnMut(&Seen) -> (u16, Value) + Send>;

/// A kube `Client` whose requests go to `handler`; every request is recorded.
fn mock_client(mut handler: Handler) -> (Client, Arc<Mutex<Vec<Seen>>>) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut handle = Box::pin(handle);
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().to_string();
            let uri = req.uri().to_string();
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
            let s = Seen { method, uri, body };
            let (code, answer) = handler(&s);
            log.lock().unwrap().push(s);
            send.send_response(
                Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
    });
    (Client::new(svc, "default"), seen)
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": reason, "reason": reason, "code": code})
}

fn pool(backend: &str, k: Value) -> WorkerPool {
    let mut p: WorkerPool = serde_json::from_value(json!({
        "apiVersion": "ate.dev/v1", "kind": "WorkerPool",
        "metadata": {"name": "p1", "namespace": "ate", "uid": "1234-abcd", "generation": 3},
        "spec": {"backend": backend, "kubernetes": k}
    }))
    .unwrap();
    p.status = None;
    p
}

fn t(secs: i64) -> Time {
    Time(Timestamp::from_second(1_700_000_000 + secs).unwrap())
}

/// Answers server-side applies by echoing the object, with `ready` of its replicas ready.
fn apply_echo(ready: i32) -> Handler {
    Box::new(move |s: &Seen| {
        assert_eq!(s.method, "PATCH", "{s:?}");
        if s.uri.contains("/status?") {
            // The API server answers with the whole pool, status patched.
            let spec = json!({"backend": "gvisor"});
            return (
                200,
                json!({"apiVersion": "ate.dev/v1", "kind": "WorkerPool", "metadata": {"name": "p1", "namespace": "ate"}, "spec": spec, "status": s.body["status"]}),
            );
        }
        let mut o = s.body.clone();
        match o["kind"].as_str() {
            Some("Deployment") => o["status"] = json!({"readyReplicas": ready}),
            Some("DaemonSet") => {
                o["status"] = json!({"numberReady": ready, "desiredNumberScheduled": 2, "currentNumberScheduled": 2, "numberMisscheduled": 0})
            }
            _ => {}
        }
        (200, o)
    })
}

#[tokio::test]
async fn logic_reconcile_applies_each_object_then_reports_ready_workers() {
    let (client, seen) = mock_client(apply_echo(1));
    let ctx = Ctx { client, cfg: OperatorConfig::default() };
    let p = pool("gvisor", json!({"replicas": 2, "tlsSecret": "w-tls"}));
    let outcome = reconcile_pool(&p, &ctx, t(0)).await.unwrap();
    assert_eq!(
        outcome,
        Outcome::Applied {
            objects: vec![
                "Deployment/ateom-p1".into(),
                "Service/ateom-p1".into(),
                "PodDisruptionBudget/ateom-p1".into()
            ],
            ready: 1,
            desired: 2
        }
    );
    // Not all ready: look again soon.
    assert_eq!(next_action(&outcome), Action::requeue(Duration::from_secs(10)));
    let seen = seen.lock().unwrap().clone();
    let uris: Vec<&str> = seen.iter().map(|s| s.uri.as_str()).collect();
    // Server-side apply, forced, as the operator's field manager, in the pool's namespace.
    assert_eq!(
        uris,
        [
            "/apis/apps/v1/namespaces/ate/deployments/ateom-p1?&force=true&fieldManager=ate-operator",
            "/api/v1/namespaces/ate/services/ateom-p1?&force=true&fieldManager=ate-operator",
            "/apis/policy/v1/namespaces/ate/poddisruptionbudgets/ateom-p1?&force=true&fieldManager=ate-operator",
            "/apis/ate.dev/v1/namespaces/ate/workerpools/p1/status?&force=true&fieldManager=ate-operator",
        ]
    );
    // Every applied object is owned by the pool (garbage-collected with it).
    for s in &seen[..3] {
        assert_eq!(s.body["metadata"]["ownerReferences"][0]["uid"], "1234-abcd", "{}", s.uri);
        assert_eq!(s.body["metadata"]["ownerReferences"][0]["controller"], true);
    }
    let st = &seen[3].body["status"];
    assert_eq!(st["readyWorkers"], 1);
    assert_eq!(st["observedGeneration"], 3);
    let cond =
        |t: &str| st["conditions"].as_array().unwrap().iter().find(|c| c["type"] == t).unwrap().clone();
    assert_eq!(cond("Supported")["status"], "True");
    assert_eq!(cond("Ready")["status"], "False");
    assert_eq!(cond("Ready")["reason"], "WorkersStarting");
    assert_eq!(cond("Ready")["message"], "1 of 2 workers ready");
}

#[tokio::test]
async fn logic_all_workers_ready_is_ready_and_keeps_the_transition_time() {
    let (client, seen) = mock_client(apply_echo(2));
    let ctx = Ctx { client, cfg: OperatorConfig::default() };
    let mut p = pool("firecracker", json!({"workload": "DaemonSet", "tlsSecret": "w-tls"}));
    // It was Ready since t(5) already: the time stays (a transition, not a write, sets it).
    p.status = Some(ate_kube::crd::WorkerPoolStatus {
        conditions: vec![ate_kube::crd::condition(
            &[],
            "Ready",
            true,
            "WorkersReady",
            "2 of 2".into(),
            Some(3),
            t(5),
        )],
        ..Default::default()
    });
    let outcome = reconcile_pool(&p, &ctx, t(100)).await.unwrap();
    assert!(matches!(outcome, Outcome::Applied { ready: 2, desired: 2, .. }), "{outcome:?}");
    assert_eq!(next_action(&outcome), Action::requeue(Duration::from_secs(300)));
    let seen = seen.lock().unwrap().clone();
    assert!(seen[0].uri.starts_with("/apis/apps/v1/namespaces/ate/daemonsets/ateom-p1?"));
    let st = &seen.last().unwrap().body["status"];
    let ready = st["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
    assert_eq!(ready["status"], "True");
    assert_eq!(ready["lastTransitionTime"], "2023-11-14T22:13:25Z", "t(5), not t(100)");
    let supported = st["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Supported").unwrap();
    assert_eq!(supported["lastTransitionTime"], "2023-11-14T22:15:00Z", "new condition: now");
}

#[tokio::test]
async fn logic_a_refused_pool_gets_only_a_status_with_the_reason() {
    let (client, seen) = mock_client(apply_echo(0));
    let ctx = Ctx { client, cfg: OperatorConfig::default() };
    let p = pool("gvisor", json!({"tlsSecret": "w-tls", "hugepages": "1Gi"}));
    let outcome = reconcile_pool(&p, &ctx, t(0)).await.unwrap();
    let Outcome::Refused(r) = &outcome else { panic!("{outcome:?}") };
    assert_eq!(r.reason, "HugepagesUnsupported");
    assert_eq!(next_action(&outcome), Action::await_change());
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "no workload applied: {seen:?}");
    assert!(seen[0].uri.starts_with("/apis/ate.dev/v1/namespaces/ate/workerpools/p1/status?"));
    let conds = seen[0].body["status"]["conditions"].as_array().unwrap().clone();
    let supported = conds.iter().find(|c| c["type"] == "Supported").unwrap();
    assert_eq!(supported["status"], "False");
    assert_eq!(supported["reason"], "HugepagesUnsupported");
    assert!(supported["message"].as_str().unwrap().contains("firecracker"));
    assert_eq!(conds.iter().find(|c| c["type"] == "Ready").unwrap()["status"], "False");
}

#[tokio::test]
async fn logic_an_api_error_is_a_retried_error_naming_the_object() {
    let (client, _) = mock_client(Box::new(|_| (403, status(403, "Forbidden"))));
    let ctx = Ctx { client, cfg: OperatorConfig::default() };
    let p = pool("gvisor", json!({"tlsSecret": "w-tls"}));
    let err = reconcile_pool(&p, &ctx, t(0)).await.unwrap_err();
    assert!(err.to_string().starts_with("applying Deployment/ateom-p1"), "{err}");
}

/// An in-memory Lease endpoint with optimistic concurrency (resourceVersion), as the API
/// server has.
fn lease_server(initial: Option<Value>) -> (Client, Arc<Mutex<Option<Value>>>) {
    let store = Arc::new(Mutex::new(initial));
    let st = store.clone();
    let (client, _) = mock_client(Box::new(move |s: &Seen| {
        let mut cur = st.lock().unwrap();
        assert!(s.uri.starts_with("/apis/coordination.k8s.io/v1/namespaces/ate/leases"), "{}", s.uri);
        match s.method.as_str() {
            "GET" => match &*cur {
                Some(l) => (200, l.clone()),
                None => (404, status(404, "NotFound")),
            },
            "POST" if cur.is_some() => (409, status(409, "AlreadyExists")),
            "POST" | "PUT" => {
                let version = cur.as_ref().map_or(0, |l| {
                    l["metadata"]["resourceVersion"].as_str().unwrap().parse::<u64>().unwrap()
                });
                if s.method == "PUT" && s.body["metadata"]["resourceVersion"] != json!(version.to_string()) {
                    return (409, status(409, "Conflict"));
                }
                let mut l = s.body.clone();
                l["metadata"]["resourceVersion"] = json!((version + 1).to_string());
                *cur = Some(l.clone());
                (200, l)
            }
            m => panic!("unexpected {m}"),
        }
    }));
    (client, store)
}

fn held_by(holder: &str, renewed: Timestamp, secs: i32, version: u64) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "ate-operator", "namespace": "ate", "resourceVersion": version.to_string()},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": secs, "renewTime": MicroTime(renewed), "acquireTime": MicroTime(renewed), "leaseTransitions": 4}
    })
}

#[test]
fn logic_lease_decisions() {
    let now = Timestamp::from_second(1_700_000_000).unwrap();
    let spec = |holder: Option<&str>, ago: i64, secs: i32| LeaseSpec {
        holder_identity: holder.map(str::to_owned),
        lease_duration_seconds: Some(secs),
        renew_time: Some(MicroTime(now.checked_sub(SignedDuration::from_secs(ago)).unwrap())),
        ..Default::default()
    };
    assert_eq!(decide(None, "a", now), LeaseStep::Create);
    assert_eq!(decide(Some(&spec(Some("a"), 100, 15)), "a", now), LeaseStep::Renew);
    assert_eq!(decide(Some(&spec(None, 0, 15)), "a", now), LeaseStep::TakeOver);
    assert_eq!(decide(Some(&spec(Some("b"), 16, 15)), "a", now), LeaseStep::TakeOver);
    assert_eq!(decide(Some(&spec(Some("b"), 15, 15)), "a", now), LeaseStep::TakeOver, "expiry instant");
    assert_eq!(
        decide(Some(&spec(Some("b"), 5, 15)), "a", now),
        LeaseStep::Follow {
            holder: "b".into(),
            until: now.checked_add(SignedDuration::from_secs(10)).unwrap()
        }
    );
}

#[tokio::test]
async fn logic_lease_create_renew_follow_and_take_over() {
    let now = Timestamp::from_second(1_700_000_000).unwrap();
    let later = |s: i64| now.checked_add(SignedDuration::from_secs(s)).unwrap();
    // No Lease: the first candidate creates it and leads; the second follows.
    let (client, store) = lease_server(None);
    let a = KubeLeaderLease::new(client.clone(), "ate", "ate-operator", "pod-a", Duration::from_secs(15));
    let b = KubeLeaderLease::new(client, "ate", "ate-operator", "pod-b", Duration::from_secs(15));
    assert!(a.try_acquire_or_renew(now).await.unwrap());
    assert!(!b.try_acquire_or_renew(later(1)).await.unwrap());
    assert!(a.try_acquire_or_renew(later(5)).await.unwrap(), "renewed");
    let l = store.lock().unwrap().clone().unwrap();
    assert_eq!(l["spec"]["holderIdentity"], "pod-a");
    assert_eq!(l["spec"]["leaseDurationSeconds"], 15);
    assert_eq!(l["spec"]["leaseTransitions"], 0);
    // a stops renewing: after expiry b takes over, one more transition; a then follows.
    assert!(!b.try_acquire_or_renew(later(19)).await.unwrap(), "not expired yet");
    assert!(b.try_acquire_or_renew(later(21)).await.unwrap());
    let l = store.lock().unwrap().clone().unwrap();
    assert_eq!(
        (l["spec"]["holderIdentity"].clone(), l["spec"]["leaseTransitions"].clone()),
        (json!("pod-b"), json!(1))
    );
    assert!(!a.try_acquire_or_renew(later(22)).await.unwrap());
    // A clean release lets a take over at once.
    b.release().await.unwrap();
    assert!(a.try_acquire_or_renew(later(23)).await.unwrap());
}

#[tokio::test]
async fn logic_lease_a_lost_race_is_following_not_an_error() {
    let now = Timestamp::from_second(1_700_000_000).unwrap();
    // An expired Lease of someone else, but every write conflicts (another candidate won).
    let expired = held_by("pod-x", now.checked_sub(SignedDuration::from_secs(60)).unwrap(), 15, 7);
    let (client, _) = mock_client(Box::new(move |s: &Seen| match s.method.as_str() {
        "GET" => (200, expired.clone()),
        _ => (409, status(409, "Conflict")),
    }));
    let a = KubeLeaderLease::new(client, "ate", "ate-operator", "pod-a", Duration::from_secs(15));
    assert!(!a.try_acquire_or_renew(now).await.unwrap());
    // Other API errors are errors (a leader that cannot renew must not assume it leads).
    let (client, _) = mock_client(Box::new(|_| (500, status(500, "InternalError"))));
    let a = KubeLeaderLease::new(client, "ate", "ate-operator", "pod-a", Duration::from_secs(15));
    assert!(a.try_acquire_or_renew(now).await.is_err());
}

#[tokio::test]
async fn logic_lease_spawned_election_reports_leadership() {
    let (client, _) = lease_server(None);
    let a = KubeLeaderLease::new(client, "ate", "ate-operator", "pod-a", Duration::from_secs(3));
    let mut rx = a.spawn();
    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|l| *l)).await.unwrap().unwrap();
}

/// The discovery watcher: pods listed by the mock API become the pool's workers.
#[tokio::test]
async fn logic_discovery_feeds_ready_pods_as_workers() {
    use ate_kube::discovery::{DiscoveryConfig, feed};
    let pod = |name: &str, ip: &str, ready: &str| {
        json!({
            "metadata": {"name": name, "namespace": "ate", "resourceVersion": "5",
                         "labels": {"app.kubernetes.io/name": "ateom", "ate.dev/pool": "gv", "ate.dev/backend": "gvisor"}},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": ready}]}
        })
    };
    let list = json!({
        "apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "10"},
        "items": [pod("gv-a", "10.1.2.3", "True"), pod("gv-b", "10.1.2.4", "False")]
    });
    let (client, seen) = mock_client(Box::new(move |s: &Seen| {
        if s.uri.contains("watch=true") {
            // No events: an empty watch stream (the watcher then re-watches).
            (200, Value::Null)
        } else {
            (200, list.clone())
        }
    }));
    let cfg = DiscoveryConfig {
        namespace: "ate".into(),
        cluster_domain: "cluster.local".into(),
        tls: ate_core::resource::TlsSpec {
            ca: "/t/ca.crt".into(),
            cert: "/t/tls.crt".into(),
            key: "/t/tls.key".into(),
        },
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(feed(client, cfg, move |rs| {
        let tx = tx.clone();
        async move {
            tx.send(rs).unwrap();
            Ok(())
        }
    }));
    let rs = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
    task.abort();
    let ate_core::Resource::WorkerPool { metadata, spec, .. } = &rs[0] else { panic!("{rs:?}") };
    assert_eq!(metadata.name, "gv");
    assert_eq!(spec.workers.len(), 1, "only the ready pod");
    assert_eq!(spec.workers[0].name, "gv-a");
    assert_eq!(
        spec.workers[0].address.as_deref(),
        Some("https://10-1-2-3.ateom-gv.ate.svc.cluster.local:7443")
    );
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen[0].uri.starts_with(
            "/api/v1/namespaces/ate/pods?&labelSelector=app.kubernetes.io%2Fname%3Dateom%2Cate.dev%2Fpool"
        ),
        "{}",
        seen[0].uri
    );
}

/// ActorTemplate resources of the cluster reach `ate apply`'s path, checked like it.
#[tokio::test]
async fn logic_templates_from_the_cluster_are_applied() {
    let template = |name: &str, location: &str| {
        json!({
            "apiVersion": "ate.dev/v1", "kind": "ActorTemplate",
            "metadata": {"name": name, "namespace": "ate", "resourceVersion": "3"},
            "spec": {"pool": "gv", "containers": [{"name": "c", "image": "oci-layout:/i:latest"}],
                     "snapshot": {"location": location}}
        })
    };
    let list = json!({
        "apiVersion": "ate.dev/v1", "kind": "ActorTemplateList", "metadata": {"resourceVersion": "10"},
        "items": [template("good", "s3://b/p"), template("bad", "/not/a/uri")]
    });
    let (client, seen) = mock_client(Box::new(move |s: &Seen| {
        if s.uri.contains("watch=true") { (200, Value::Null) } else { (200, list.clone()) }
    }));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(ate_kube::discovery::feed_templates(client, "ate".into(), move |rs| {
        let tx = tx.clone();
        async move {
            tx.send(rs).unwrap();
            Ok(())
        }
    }));
    let rs = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
    // Only the valid one; the bad location is refused as `ate apply` would refuse it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    task.abort();
    assert!(rx.try_recv().is_err(), "the invalid template was applied");
    let ate_core::Resource::ActorTemplate { metadata, spec, .. } = &rs[0] else { panic!("{rs:?}") };
    assert_eq!((metadata.name.as_str(), metadata.namespace.as_str()), ("good", "ate"));
    assert_eq!(spec.snapshot.location, "s3://b/p");
    assert!(seen.lock().unwrap()[0].uri.starts_with("/apis/ate.dev/v1/namespaces/ate/actortemplates?"));
}
