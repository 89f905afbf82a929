//! `Store::open("s3://…")` takes endpoint, region and credentials from the usual AWS
//! environment variables. Alone in its test binary because it sets process environment.

#![cfg(feature = "cloud")]

mod common;

use ateom_store::Store;
use common::s3server::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};
use common::*;

#[test]
fn s3_configured_from_aws_environment_variables() {
    let Some(server) = S3Server::start("s3_configured_from_aws_environment_variables") else { return };
    // SAFETY: the only test in this binary, and no other thread has started reading the
    // environment yet (the runtime is built below).
    unsafe {
        std::env::set_var("AWS_ENDPOINT_URL", &server.endpoint);
        std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_ALLOW_HTTP", "true");
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    write_runs(&src.join("checkpoint.img"), &[Run::Data(100_000, 1), Run::Zero(50_000), Run::Data(10, 2)]);
    let store = Store::open(&format!("s3://{BUCKET}/env")).unwrap();
    let names = vec!["checkpoint.img".to_string()];
    let push =
        rt.block_on(store.push_dir(&src, &names, "gvisor-1", serde_json::json!({"backend": "gvisor"})));
    let push = push.unwrap();
    assert_eq!(push.logical_bytes, 150_010);
    let dst = tmp.path().join("dst");
    rt.block_on(store.pull(None, &dst)).unwrap();
    assert!(
        std::fs::read(src.join("checkpoint.img")).unwrap()
            == std::fs::read(dst.join("checkpoint.img")).unwrap()
    );
}
