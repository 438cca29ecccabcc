//! What the fuzz targets that run the engine set up once per process: a runtime with the
//! server's thread stacks and a fresh data directory.

use std::path::PathBuf;

/// Stack of the runtime's threads, as `main.rs` gives them: planning recurses once per nesting
/// level, and the engine counts on this much.
const THREAD_STACK_BYTES: usize = 16 * 1024 * 1024;

/// A multi-threaded tokio runtime with the server's thread stacks.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(THREAD_STACK_BYTES)
        .build()
        .expect("building the tokio runtime")
}

/// A fresh data directory for this process of `target`.
pub fn data_dir(target: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tributary-fuzz-{target}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the data directory");
    dir
}
