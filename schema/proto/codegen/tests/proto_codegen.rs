//! The generated protocol code in `schema/src/proto/` is committed (no
//! `protoc` at build time). This test regenerates it from
//! `schema/proto/agent.proto` with the pure-Rust `protox` compiler and fails
//! when the committed file differs.

use std::path::PathBuf;

const GENERATED: &str = "tpr.agent.v1.rs";

#[test]
fn committed_protocol_code_matches_the_proto_file() {
    let schema = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let fds = protox::compile(["agent.proto"], [schema.join("proto")])
        .expect("schema/proto/agent.proto compiles");
    let out = std::env::temp_dir().join(format!("tpr-proto-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".tpr.agent.v1.Chunk.data")
        .out_dir(&out)
        .compile_fds(fds)
        .expect("code generation succeeds");
    let fresh = std::fs::read_to_string(out.join(GENERATED)).unwrap();
    std::fs::remove_dir_all(&out).ok();

    let committed_path = schema.join("src/proto").join(GENERATED);
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    if fresh != committed {
        if std::env::var_os("TPR_REGENERATE").is_some() {
            std::fs::write(&committed_path, fresh).unwrap();
            return;
        }
        panic!(
            "{} is out of date with schema/proto/agent.proto; regenerate it with:\n  \
             TPR_REGENERATE=1 cargo test -p tpr-proto-codegen",
            committed_path.display()
        );
    }
}
