//! Project automation: `cargo xtask codegen [--check]`,
//! `cargo xtask bench [--quick] [--only NAME,NAME…]`.

mod bench;
mod codegen;
mod quirks;

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["codegen"] => run_codegen(false),
        ["codegen", "--check"] => run_codegen(true),
        ["bench", rest @ ..] => bench::Options::parse(rest).and_then(bench::run),
        _ => Err(
            "usage: cargo xtask codegen [--check] | cargo xtask bench [--quick] [--only NAME,NAME…]"
                .to_owned(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The Docker bindings first, so a main crate that does not compile cannot
/// block regenerating them; then the JSON schemas derived from the main
/// crate's types, which only its own binary can write.
fn run_codegen(check: bool) -> Result<(), String> {
    codegen::generate_docker_bindings(check)?;
    write_schemas(check)
}

fn write_schemas(check: bool) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(codegen::project_root()).args([
        "run",
        "--quiet",
        "--bin",
        "oz-agent-worker",
        "--",
        "internal",
        "write-schemas",
        "api-specs",
    ]);
    if check {
        cmd.arg("--check");
    }
    let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err("writing the JSON schemas failed (see above)".to_owned())
    }
}

#[cfg(test)]
mod tests {
    /// `cargo test` catches bindings that drifted from the spec or the
    /// generator. (The JSON schemas have their own test in the main crate.)
    #[test]
    fn docker_bindings_are_fresh() {
        if let Err(e) = crate::codegen::generate_docker_bindings(true) {
            panic!("{e}");
        }
    }
}
