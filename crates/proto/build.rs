// Generates the gRPC and event types from `proto/`. protoc comes from the
// protoc-bin-vendored crate so a fresh machine needs no system protobuf compiler.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    set_protoc(&protoc);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("tidings_descriptor.bin"))
        .compile_protos(
            &[
                root.join("tidings/ticket/v1/ticket.proto"),
                root.join("tidings/events/v1/ticket_event.proto"),
                root.join("tidings/events/v1/notification_event.proto"),
                root.join("tidings/push/v1/push.proto"),
            ],
            &[root],
        )?;
    println!("cargo:rerun-if-changed=../../proto");
    Ok(())
}

fn set_protoc(path: &std::path::Path) {
    // prost-build reads the documented PROTOC variable; a caller's own protoc wins.
    if std::env::var_os("PROTOC").is_none() {
        #[allow(unsafe_code)]
        // SAFETY: a build script is single-threaded, so nothing reads the environment concurrently.
        unsafe {
            std::env::set_var("PROTOC", path)
        };
    }
}
