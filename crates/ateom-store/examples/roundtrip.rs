//! Push a directory's files to a store and pull them back, printing both reports as JSON.
//!
//! ```sh
//! cargo run -p ateom-store --example roundtrip -- file:///tmp/bucket /path/to/snapdir /tmp/restore memory.img vmstate
//! ```
//! For S3 set `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`
//! (and `AWS_ALLOW_HTTP=true` for a plain-http server such as `scripts/s3-server.sh start`).

use std::path::PathBuf;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: roundtrip STORE_URI SRC_DIR DEST_DIR FILE...";
    let uri = args.next().ok_or(usage)?;
    let src = PathBuf::from(args.next().ok_or(usage)?);
    let dst = PathBuf::from(args.next().ok_or(usage)?);
    let files: Vec<String> = args.collect();
    let mut store = ateom_store::Store::open(&uri)?;
    if let Some(cs) = std::env::var("CHUNK_SIZE").ok().and_then(|v| v.parse().ok()) {
        let config = ateom_store::StoreConfig { chunk_size: cs, ..store.config().clone() };
        store = store.with_config(config)?;
    }
    let id = format!("example-{}", std::process::id());
    let meta = serde_json::json!({"source": src.display().to_string()});
    let pushed = store.push_dir(&src, &files, &id, meta).await?;
    println!("{}", serde_json::to_string(&pushed)?);
    let pulled = store.pull(Some(&id), &dst).await?;
    println!("{}", serde_json::to_string(&pulled)?);
    Ok(())
}
