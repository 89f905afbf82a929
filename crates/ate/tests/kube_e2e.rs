//! End to end on a real Kubernetes cluster: runs only where `KUBECONFIG` points to one (no
//! API server is in any package registry the development machines reach, so here it prints
//! a SKIPPED line).
//!
//! Needs ate installed in namespace `ate` (README, "Kubernetes": `kubectl apply -k
//! deploy/overlays/gvisor` and the TLS Secrets), its admin API and router reachable from this
//! machine (`kubectl -n ate port-forward svc/ate-api 7070 & kubectl -n ate port-forward
//! svc/ate-router 7080:80 &`), and:
//!   ATE_E2E_API=127.0.0.1:7070 ATE_E2E_ROUTER=127.0.0.1:7080 ATE_E2E_TOKEN=<admin token>
//!   ATE_E2E_IMAGE=<image reference the worker can prepare, serving a counter on :8080>
//! It creates a WorkerPool and an ActorTemplate (the same YAML, through the Kubernetes API and
//! through `ate apply`), waits for the worker pods, creates an actor, sends it traffic, pauses
//! it, and checks that traffic resumes it with its counter intact.

use std::time::{Duration, Instant};

use ate::api::ApiClient;
use ate_kube::crd::{ActorTemplate, WorkerPool};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("KUBECONFIG is set, so this end-to-end test runs, and it needs {name} (see the header of crates/ate/tests/kube_e2e.rs)")
    })
}

async fn wait<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn through_router(router: &str, actor: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(router).await.unwrap();
    let req = format!("GET / HTTP/1.1\r\nHost: {actor}.actors.local\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split("\r\n\r\n").nth(1).unwrap_or_default().trim().to_owned()
}

#[tokio::test]
async fn kube_e2e_pool_template_actor_traffic_pause_resume() {
    if std::env::var_os("KUBECONFIG").is_none() {
        eprintln!(
            "SKIPPED kube_e2e_pool_template_actor_traffic_pause_resume: no cluster (KUBECONFIG unset; no Kubernetes API server is in any package registry these machines reach)"
        );
        return;
    }
    let (api_addr, router, token, image) =
        (env("ATE_E2E_API"), env("ATE_E2E_ROUTER"), env("ATE_E2E_TOKEN"), env("ATE_E2E_IMAGE"));
    let yaml = format!(
        r#"apiVersion: ate.dev/v1
kind: WorkerPool
metadata: {{ name: e2e, namespace: ate }}
spec:
  backend: gvisor
  tls: {{ ca: /etc/ate/tls/ca.crt, cert: /etc/ate/tls/tls.crt, key: /etc/ate/tls/tls.key }}
  kubernetes: {{ replicas: 1, tlsSecret: ateom-worker-tls, resources: {{ cpu: "1", memory: 2Gi }} }}
---
apiVersion: ate.dev/v1
kind: ActorTemplate
metadata: {{ name: e2e-counter, namespace: ate }}
spec:
  pool: e2e
  containers:
    - name: counter
      image: "{image}"
      readyz: {{ httpGet: {{ path: /readyz, port: 8080 }} }}
  snapshot: {{ location: "file:///var/lib/ateom/e2e-snapshots" }}
"#
    );
    let client = Client::try_default().await.expect("a client from KUBECONFIG");
    let docs: Vec<&str> = yaml.split("---\n").collect();
    let pools: Api<WorkerPool> = Api::namespaced(client.clone(), "ate");
    let templates: Api<ActorTemplate> = Api::namespaced(client.clone(), "ate");
    let pp = PatchParams::apply("ate-e2e").force();
    let pool: serde_json::Value = serde_yaml::from_str(docs[0]).unwrap();
    pools.patch("e2e", &pp, &Patch::Apply(&pool)).await.expect("apply the WorkerPool");
    let template: serde_json::Value = serde_yaml::from_str(docs[1]).unwrap();
    templates.patch("e2e-counter", &pp, &Patch::Apply(&template)).await.expect("apply the ActorTemplate");

    // The operator shapes the pool; its pod becomes ready.
    wait("the WorkerPool's Ready condition", Duration::from_secs(600), || async {
        let p = pools.get("e2e").await.ok()?;
        let ready = p.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
        (ready.status == "True").then_some(())
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "ate");
    let pod = wait("a ready worker pod", Duration::from_secs(120), || async {
        let list = pods.list(&ListParams::default().labels("ate.dev/pool=e2e")).await.ok()?;
        list.items.into_iter().find(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
    })
    .await;
    let pod_name = pod.metadata.name.unwrap();

    // ate serve discovers it; the template (the same YAML) is applied through ate's API too.
    let ate = ApiClient::with_token(&api_addr, Some(token));
    wait("ate serve to see the worker pod as a healthy worker", Duration::from_secs(120), || async {
        let ws = ate.workers().await.ok()?;
        ws.iter().any(|w| w.name == pod_name && w.healthy).then_some(())
    })
    .await;
    ate.apply(docs[1]).await.expect("ate apply of the same ActorTemplate YAML");
    let actor = format!("e2e{}", std::process::id());
    wait("the actor to be created (golden snapshot first)", Duration::from_secs(300), || async {
        ate.call(
            hyper::Method::POST,
            "/v1/actors",
            Some(serde_json::json!({"name": actor, "template": "e2e-counter"})),
        )
        .await
        .ok()
    })
    .await;

    let first = through_router(&router, &actor).await;
    let second = through_router(&router, &actor).await;
    assert_ne!(first, second, "a counter answers with increasing values");
    let paused = ate.action(&actor, "pause").await.expect("pause");
    assert_eq!(paused.actor.state.to_string(), "PAUSED");
    let third = through_router(&router, &actor).await;
    let n = |s: &str| s.split_whitespace().last().and_then(|w| w.parse::<u64>().ok());
    if let (Some(b), Some(c)) = (n(&second), n(&third)) {
        assert_eq!(c, b + 1, "resumed with its in-memory counter: {second} then {third}");
    }
    assert_eq!(ate.actor(&actor).await.unwrap().actor.state.to_string(), "RUNNING");
    ate.call(hyper::Method::DELETE, &format!("/v1/actors/{actor}"), None).await.expect("delete the actor");
    pools.delete("e2e", &Default::default()).await.expect("delete the pool");
}
