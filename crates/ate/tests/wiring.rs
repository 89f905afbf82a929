//! What ate sends its workers, checked at a fake worker (the real gRPC contract, no sandbox):
//! a template's `resources` reach every RunWorkload and RestoreWorkload as the proto's
//! `Resources` (field 25); a template without them sends none (the worker's defaults).

mod common;

use std::time::Duration;

use ateom_proto as pb;
use common::fake::{FakeWorker, Script, Upstream};
use common::{golden_settled, pool_and_template, serve_in};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_resources_reach_every_run_and_restore() {
    let dir = tempfile::Builder::new().prefix("ate-wiring-").tempdir().unwrap();
    let serve = serve_in(dir.path(), &["--resume-timeout", "15s"]);
    let upstream = Upstream::start().await;
    let up = upstream.addr.to_string();
    let bucket = format!("file://{}/bucket", dir.path().display());
    let w = FakeWorker::start(
        &dir.path().join("w"),
        Script { run_endpoint: up.clone(), restore_endpoint: up.clone(), ..Default::default() },
    )
    .await;
    let limited = "  resources: { cpu: 500m, memory: 256Mi, pids: 128 }\n";
    serve
        .api
        .apply(&pool_and_template("p", "w", &w.socket, "limited", &format!("{bucket}/l"), limited))
        .await
        .unwrap();
    let g = golden_settled(&serve, "limited", 20).await;
    assert_eq!(g["golden"]["status"], "READY", "{g}");
    assert_eq!(g["spec"]["resources"]["pids"], 128, "{g}");
    let want = Some(pb::Resources { cpu_milli: 500, memory_bytes: 256 << 20, pids: 128 });
    assert_eq!(w.seen().runs, vec![want], "the golden build's RunWorkload");

    serve.api.apply("kind: Actor\nmetadata: { name: a1 }\nspec: { template: limited }\n").await.unwrap();
    serve.api.action("a1", "resume").await.unwrap();
    serve.api.action("a1", "suspend").await.unwrap();
    serve.api.action("a1", "resume").await.unwrap();
    let restores = w.seen().restores;
    assert_eq!(restores.len(), 2, "{restores:?}");
    assert!(restores.iter().all(|(_, r)| *r == want), "{restores:?}");

    // Without resources: none sent. The same worker, free again after a suspend.
    serve.api.action("a1", "suspend").await.unwrap();
    let plain = pool_and_template("p", "w", &w.socket, "plain", &format!("{bucket}/p"), "");
    let plain = plain.split("---\n").nth(1).unwrap().to_owned();
    serve.api.apply(&plain).await.unwrap();
    let g = golden_settled(&serve, "plain", 20).await;
    assert_eq!(g["golden"]["status"], "READY", "{g}");
    let runs = w.seen().runs;
    assert_eq!(runs.last(), Some(&None), "{runs:?}");

    // A CPU quantity the worker could not honour is refused at apply, naming the field.
    let bad = pool_and_template(
        "p",
        "w",
        &w.socket,
        "bad",
        &format!("{bucket}/b"),
        "  resources: { cpu: \"0\" }\n",
    );
    let err = serve.api.apply(&bad).await.unwrap_err().to_string();
    assert!(err.contains("spec.resources.cpu"), "{err}");
    tokio::time::sleep(Duration::from_millis(10)).await;
}
