// The scheduler does not ask for libtorch (dlp-plugin without its `torch` feature). In the
// workspace's own builds (`cargo build --workspace`, what the scripts and tests run) cargo
// unifies dlp-plugin's features with the executor's, so that scheduler does link libtorch;
// give it an rpath to the venv's libtorch then, as the other binaries have, so it runs
// without LD_LIBRARY_PATH. Built alone (`cargo build -p dlp-scheduler`, its container
// image) it links no libtorch and the rpath is unused.
fn main() {
    println!("cargo:rerun-if-env-changed=VIRTUAL_ENV");
    let Ok(venv) = std::env::var("VIRTUAL_ENV") else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(std::path::Path::new(&venv).join("lib")) else {
        return;
    };
    for entry in entries.flatten() {
        let lib = entry.path().join("site-packages/torch/lib");
        if lib.is_dir() {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        }
    }
}
