//! Project automation: `cargo xtask codegen [--check]`.
fn main() {
    eprintln!("xtask: codegen not written yet");
    std::process::exit(2);
}
